"""Which layers each host holds when a model is spread over RPC workers.

Mirrors llama.cpp's assignment (src/llama-model.cpp, load_tensors) so the
estimate and the server agree: `-ngl N` offloads the last N of the n_layer + 1
"layers" (the repeating blocks, then the output head), the main host keeps the
first ones and the input embeddings; the offloaded ones are cut among the
devices at the cumulative --tensor-split fractions. DiskLLM always passes
integer layer counts as --tensor-split, so the cut is exact and the same in
both places. Each layer's KV cache lives with the layer (llama.cpp's default
KV offload): the main host's part in the SSD KV file, a worker's in its RAM.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import GGUFInfo
from diskllm.core.units import human_bytes

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_OUTPUT = ("output.", "output_norm.")  # the head: llama.cpp's layer n_layer
EQUAL_WITHIN = 0.01  # workers offering memory within 1% of each other get equal shares


@dataclass(frozen=True)
class HostShare:
    name: str            # "main" or the worker's HOST:PORT
    layers: tuple[int, int]  # repeating blocks [first, last + 1)
    output: bool         # holds the output head
    weights: int         # bytes of weights it holds (main: mmap'd; worker: in its RAM)
    kv: int              # f16 KV bytes at ctx (main: SSD KV file with --kv-backend ssd)

    @property
    def n_layers(self) -> int:
        return self.layers[1] - self.layers[0]

    def describe_layers(self) -> str:
        a, b = self.layers
        blocks = "no layers" if a == b else (f"layer {a}" if b - a == 1 else f"layers {a}-{b - 1}")
        return blocks + (" + output" if self.output else "")

    def describe(self, kv_backend: str = "ssd") -> str:
        """'layers 0-9 (weights 30.1 MiB mmap'd, KV 36.0 MiB on SSD)'."""
        b = lambda n: human_bytes(n, "binary")  # noqa: E731
        if self.name == "main":
            kv = "on SSD, file-backed" if kv_backend == "ssd" else "private RAM"
            return f"{self.describe_layers()} (weights {b(self.weights)} mmap'd, KV {b(self.kv)} {kv})"
        return f"{self.describe_layers()} (weights {b(self.weights)} + KV {b(self.kv)} in the worker's RAM)"


@dataclass(frozen=True)
class Split:
    ngl: int                      # -ngl for llama-server
    counts: tuple[int, ...]       # --tensor-split: offloaded layers per worker (output counts as one)
    hosts: tuple[HostShare, ...]  # main first, then the workers in --rpc order

    @property
    def main(self) -> HostShare:
        return self.hosts[0]

    def tensor_split_flag(self) -> str:
        return ",".join(str(c) for c in self.counts)

    def rows(self, kv_backend: str = "ssd") -> list[tuple[str, str]]:
        """(label, value) rows for `show` and the workbench: one per host."""
        return [("main host" if h.name == "main" else f"worker {h.name}", h.describe(kv_backend))
                for h in self.hosts]


def default_ngl(n_layer: int, n_workers: int) -> int:
    """Every host an equal share: the main host keeps n_layer // (workers + 1) blocks."""
    return n_layer + 1 - n_layer // (n_workers + 1)


def shares(total: int, weights: list[int] | None, n: int) -> list[int]:
    """`total` layers cut in proportion to `weights` (None = equal), largest remainder,
    ties to the earlier worker; near-equal weights count as equal."""
    if n <= 0:
        return []
    w = [float(x) for x in weights] if weights and len(weights) == n and max(weights) > 0 else [1.0] * n
    top = max(w)
    w = [top if top - x <= EQUAL_WITHIN * top else x for x in w]
    exact = [total * x / sum(w) for x in w]
    out = [int(e) for e in exact]
    order = sorted(range(n), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def _layer_of(name: str, n_layer: int) -> int | None:
    """A tensor's layer: 0..n_layer-1 for blocks, n_layer for the head, None for the inputs."""
    m = _BLOCK.match(name)
    if m:
        return int(m.group(1))
    if name.startswith(_OUTPUT):
        return n_layer
    return None


def plan_split(info: GGUFInfo, ctx: int, workers: list[str], ngl: int | None = None,
               weights: list[int] | None = None) -> Split:
    """The split of `info` over the main host and `workers` (HOST:PORT strings)."""
    n_layer, n_workers = info.n_layer, len(workers)
    if n_workers == 0:
        raise DiskLLMError("a split needs at least one RPC worker (--rpc HOST:PORT)")
    ngl = default_ngl(n_layer, n_workers) if ngl is None else ngl
    if ngl < 0:
        raise DiskLLMError(f"--ngl must be >= 0, got {ngl}")
    act = min(ngl, n_layer + 1)
    start = n_layer + 1 - act  # first offloaded "layer"
    counts = shares(act, weights, n_workers)

    by_layer = [0] * (n_layer + 1)
    main_weights = 0
    for t in info.tensors:
        il = _layer_of(t.name, n_layer)
        if il is None or il > n_layer:
            main_weights += t.n_bytes
        else:
            by_layer[il] += t.n_bytes

    def host(name: str, first: int, last: int, base: int = 0) -> HostShare:
        blocks = (min(first, n_layer), min(last, n_layer))
        return HostShare(name, blocks, first <= n_layer < last,
                         base + sum(by_layer[first:last]),
                         sum(info.layer_kv_bytes(il, ctx) for il in range(*blocks)))

    hosts = [host("main", 0, start, main_weights)]
    at = start
    for name, c in zip(workers, counts):
        hosts.append(host(name, at, at + c))
        at += c
    return Split(ngl, tuple(counts), tuple(hosts))
