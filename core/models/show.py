"""What `diskllm show` reports about a GGUF: geometry from its header and memory estimates.

Memory model (also in docs/models.md). llama.cpp mmaps the weights in both backends,
so weights count as file-backed page cache (evictable, shared), not private RAM, except
the copy the CPU backend repacks for its faster kernels (Q4_0/Q4_K/IQ4_NL/MXFP4 on x86
AVX2: nearly all of a Q4_K_M model). Config `repack = "off"` (the default) skips that
copy; `"file"` keeps it in the repack cache file, file-backed too; `"ram"` (upstream)
keeps it in private RAM:
- ram backend: private RAM ~= KV(ctx) + compute buffers; resident ~= weights + KV(ctx) + compute.
- ssd backend: private RAM ~= compute buffers; weights and KV(ctx) are file-backed mappings
  the kernel can evict under pressure; on disk the KV file grows with the tokens used,
  up to KV(ctx).
KV(ctx) = sum over layers of 2 (K and V) * n_head_kv * head_dim * 2 bytes (f16) * cells,
where cells = ctx for full-attention layers and min(ctx, window) for sliding-window layers.
Compute buffers are not estimated (they depend on batch size and vocabulary).
"""
from __future__ import annotations

from dataclasses import dataclass

from diskllm.core.models.gguf import GGUFInfo
from diskllm.core.models.repack import repacked_bytes
from diskllm.core.units import human_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    ctx: int
    weights: int            # bytes of GGUF files (mmap, file-backed in both backends)
    kv: int                 # f16 KV bytes at ctx
    kv_swa: int             # part of kv held by sliding-window layers
    repacked: int = 0       # weights this CPU's backend repacks (core.models.repack)
    repack: str = "off"    # config.REPACK_MODES: where that copy lives

    @property
    def weights_private(self) -> int:
        """Weight bytes in private RAM: only upstream's repacked copy."""
        return self.repacked if self.repack == "ram" else 0

    @property
    def ram_private(self) -> int:
        return self.kv + self.weights_private

    @property
    def ram_resident(self) -> int:
        return self.weights + self.kv

    @property
    def ssd_private(self) -> int:
        return self.weights_private  # + compute buffers, as for ram

    @property
    def ssd_file_backed(self) -> int:
        return self.weights + self.kv


def estimate_memory(info: GGUFInfo, ctx: int, weights: int | None = None, repack: str = "off") -> MemoryEstimate:
    swa, full = info.kv_bytes_split(ctx)
    return MemoryEstimate(ctx, info.file_size if weights is None else weights, swa + full, swa,
                          repacked_bytes(info), repack)


def weights_text(e: MemoryEstimate) -> str:
    """Where the weights live under the repack mode, in one line."""
    mapped = f"{human_bytes(e.weights)} mmap'd (file-backed)"
    if not e.repacked:
        return mapped
    copy = human_bytes(e.repacked)
    return {"file": f"{mapped}; {copy} repacked into the repack cache (file-backed)",
            "off": f"{mapped}; {copy} left unrepacked (repack = \"off\"): nothing private",
            "ram": f"{mapped}; {copy} repacked into PRIVATE RAM (repack = \"ram\")"}[e.repack]




def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _heads(v: int | list[int]) -> str:
    if isinstance(v, list):
        distinct = sorted(set(v))
        return str(distinct[0]) if len(distinct) == 1 else f"{min(v)}-{max(v)} (per layer)"
    return str(v)


def describe(info: GGUFInfo, ctx: int, weights: int | None = None, repack: str = "off") -> list[tuple[str, str]]:
    """(label, value) rows for `diskllm show`, figures straight from the header."""
    rows = [
        ("architecture", info.arch),
        ("parameters", human_count(info.n_params)),
        ("quantization", info.quant),
        ("layers", str(info.n_layer)),
        ("KV heads", f"{_heads(info.n_head_kv)} x {info.head_dim_k} (K) / {info.head_dim_v} (V)"),
        ("trained context", str(info.context_length or "unknown")),
    ]
    if info.is_swa:
        n_swa = sum(info.swa_layers)
        rows.append(("sliding window", f"{info.sliding_window} tokens on {n_swa} of {info.n_layer} layers (iSWA)"
                     if n_swa < info.n_layer else f"{info.sliding_window} tokens on all layers"))
    rows.append(("chat template", "yes" if info.has_chat_template else "no"))
    rows.append(("KV bytes/token", f"{info.kv_bytes_per_token():,} (f16, all layers)"))
    if info.is_swa:
        full_layers = [il for il in range(info.n_layer) if not info.swa_layers[il]]
        per_full = sum(int(info._layer_bytes(il, 2)) for il in full_layers)
        rows.append(("KV bytes/token beyond window", f"{per_full:,} (full-attention layers only)"))
    m = estimate_memory(info, ctx, weights, repack)
    weights_private = f" + repacked weights {human_bytes(m.weights_private)}" if m.weights_private else ""
    rows += [
        (f"KV cache at ctx {ctx:,}", f"{m.kv:,} bytes ({human_bytes(m.kv)})"),
        ("weights", weights_text(m)),
        ("ram backend", f"private RAM ~ {human_bytes(m.ram_private)} (KV{weights_private}) + compute buffers"),
        ("ssd backend", f"private RAM ~ {human_bytes(m.ssd_private) + ' (repacked weights) + ' if m.ssd_private else ''}"
                        f"compute buffers only; file-backed {human_bytes(m.ssd_file_backed)} "
                        f"(weights {human_bytes(m.weights)} + KV {human_bytes(m.kv)}, evictable)"),
    ]
    return rows
