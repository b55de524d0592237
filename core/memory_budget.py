"""The memory budget a paging server will see, and how much of a model's working set
streams from the SSD per token at a given fill.

The patched server decides its own budget, live (patch 0006, `read_budget` in
llama-kv-prefetch.cpp): `--kv-budget MIB` if given; otherwise the memory cgroup's
limit (its own, or since patch 0024 a parent's less what the rest of the parent
holds) less the server's private memory and a margin of 8 MiB + 1/64 of the limit,
bounded by MemAvailable less max(256 MiB, 1/32 of RAM). This module applies the same
rule from the same files before a start, so `diskllm show` and the TUI's start form
can say what will stream: the server is started in this process's cgroup. Private
memory is not known before the start; the estimate counts what the ssd backend keeps
private by design (a repacked copy of the weights) and not the compute buffers (tens
of MB), so it errs toward less streaming than the server will see.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diskllm.core.models.gguf import GGUFInfo
from diskllm.core.models.show import estimate_memory
from diskllm.core.units import human_bytes

CGROUP_ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 1 << 60  # v1 reports "no limit" as a huge number, v2 as "max"


@dataclass(frozen=True)
class Budget:
    bytes: int          # KV + weight bytes that may stay resident
    source: str         # "--kv-budget", "[parent ]cgroup memory.max" (v1: memory.limit_in_bytes), "MemAvailable"
    limit: int | None = None  # the cgroup limit it came from


@dataclass(frozen=True)
class CgroupLimit:
    limit: int
    rest: int       # what the cgroup holds besides this process's own cgroup (0 for the own one)
    version: int
    parent: bool    # set on an ancestor (patch 0024), not on this process's own cgroup


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def cgroup_memory_limits(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> list[CgroupLimit]:
    """The memory limits over this process, as the server reads them: its own cgroup's
    and every ancestor's up to the mount's root (v1 first, then v2)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    found: tuple[Path, Path, int] | None = None  # (mount, own cgroup's directory, version)
    v2: str | None = None
    for line in lines:
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(",") and found is None:
            d = root / "memory" / path.lstrip("/")
            if (d / "memory.limit_in_bytes").is_file():
                found = (root / "memory", d, 1)
    if found is None and v2 is not None and (root / v2.lstrip("/") / "memory.max").is_file():
        found = (root, root / v2.lstrip("/"), 2)
    if found is None:
        return []
    mount, own, version = found
    limit_name, usage_name = ("memory.limit_in_bytes", "memory.usage_in_bytes") if version == 1 else \
        ("memory.max", "memory.current")
    use = _read_int(own / usage_name)
    if use is None:
        return []
    out: list[CgroupLimit] = []
    for d in [own, *(p for p in own.parents if mount in p.parents)]:  # (the mount's root has no limit)
        limit = _read_int(d / limit_name)
        if limit is not None and 0 < limit < NO_LIMIT:  # ("max" in v2 reads as None: no limit)
            rest = 0 if d == own else max((_read_int(d / usage_name) or use) - use, 0)
            out.append(CgroupLimit(limit, rest, version, d != own))
    return out


def _meminfo(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                out[key] = int(fields[0]) * 1024
    except OSError:
        pass
    return out


def read_budget(kv_budget_mib: int | None = None, private: int = 0, *,
                proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT,
                meminfo: Path = Path("/proc/meminfo")) -> Budget | None:
    """The budget a server started now would read; None when nothing bounds it."""
    if kv_budget_mib:
        return Budget(kv_budget_mib << 20, "--kv-budget")
    best: Budget | None = None
    for cg in cgroup_memory_limits(proc_cgroup, root):
        room = cg.limit - cg.rest - private - ((8 << 20) + cg.limit // 64)
        source = ("parent " if cg.parent else "") + ("cgroup memory.limit_in_bytes" if cg.version == 1
                                                      else "cgroup memory.max")
        if best is None or room < best.bytes:
            best = Budget(max(room, 0), source, cg.limit)
    mem = _meminfo(meminfo)
    if mem.get("MemAvailable"):
        avail = mem["MemAvailable"] - max(256 << 20, mem.get("MemTotal", 0) // 32)
        if best is None or avail < best.bytes:
            best = Budget(max(avail, 0), "MemAvailable")
    return best


def start_budget(info: GGUFInfo, ctx: int, repack: str, kv_budget_mib: int | None,
                 weights: int | None = None) -> Budget | None:
    """The budget a server of this model started now would read (`diskllm show`, the start
    form): private memory is what the ssd backend keeps by design, a repacked copy."""
    return read_budget(kv_budget_mib, estimate_memory(info, ctx, weights, repack).ssd_private)


@dataclass(frozen=True)
class StreamingEstimate:
    fill: int
    weights: int
    kv: int              # KV bytes of the filled cells
    budget: Budget | None

    @property
    def working_set(self) -> int:
        """W: what every token reads: each filled KV cell of each layer, every weight."""
        return self.weights + self.kv

    @property
    def streamed(self) -> int:
        """W - B: the least a token reads from the SSD when W does not fit."""
        return 0 if self.budget is None else max(self.working_set - self.budget.bytes, 0)


def estimate_streaming(info: GGUFInfo, fill: int, budget: Budget | None, weights: int | None = None,
                       kv_type_bytes: float = 2) -> StreamingEstimate:
    swa, full = info.kv_bytes_split(fill, kv_type_bytes)
    return StreamingEstimate(fill, info.file_size if weights is None else weights, swa + full, budget)


def budget_text(b: Budget | None) -> str:
    if b is None:
        return "unknown (no cgroup limit, no MemAvailable)"
    if b.limit is not None:
        rest = "what the rest of it holds, " if b.source.startswith("parent") else ""
        return (f"{human_bytes(b.bytes)} ({b.source} {human_bytes(b.limit)}, less {rest}an 8 MiB + 1/64 margin "
                "and private memory)")
    return f"{human_bytes(b.bytes)} ({b.source})"


def streaming_text(e: StreamingEstimate) -> str:
    """One line: what a token reads from the SSD at this fill, or that it all fits."""
    w = f"working set {human_bytes(e.working_set)} (weights {human_bytes(e.weights)} + KV {human_bytes(e.kv)})"
    if e.budget is None:
        return f"{w}; budget unknown"
    if not e.streamed:
        return f"{w} fits the budget: nothing streams"
    share = e.streamed / e.working_set
    return (f"{w}: about {human_bytes(e.streamed)} ({share:.0%}) streams from the SSD per token; "
            f"{human_bytes(e.streamed)} more RAM would keep it all resident")


def paging_rows(info: GGUFInfo, fill: int, budget: Budget | None, weights: int | None = None) -> list[tuple[str, str]]:
    """(label, value) rows for `diskllm show`: the budget, and what streams at this fill."""
    e = estimate_streaming(info, fill, budget, weights)
    return [("memory budget", budget_text(budget)), (f"paging at {fill:,} tokens", streaming_text(e))]
