"""Synthesized GGUF models for tests and benchmarks (docs/design.md, Test models).

Two files written with the `gguf` package, random weights from a fixed seed,
tokenizer keys copied from SmolLM2 so llama-server loads them and generates
(nonsense) text with real KV traffic:

- synthesize_qwen7b_geometry(): llama arch with the KV geometry of Qwen2.5-7B
  (28 layers, 4 KV heads x 128 = 57,344 bytes of f16 KV per token) but tiny
  weights (~133 MB), trained context 131072.
- synthesize_hybrid(): a tiny `lfm2` model (short-conv layers + attention
  layers, per-layer head_count_kv with 0 for conv layers), so the hybrid
  memory (attention KV + recurrent conv state) is exercised for real.
- synthesize_qwen7b_full(): Qwen2.5-7B's full matrix dimensions (n_embd 3584,
  28 heads, 4 KV heads x 128, ffn 18944) in Q4_K or Q4_0, the quant types the
  CPU backend repacks, written block by block as raw bytes with valid scales
  (28 layers ~3.9 GB, for benchmarks only; `n_layer=2` ~0.36 GB, for tests).

Both are cached in the test-model folder ($DISKLLM_TEST_MODELS or
~/.cache/diskllm/test-models), written to a temp file and renamed into place,
deterministic (same bytes every time) and never committed.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

from diskllm.core.errors import DiskLLMError
from diskllm.testing.fetch import default_cache_dir, fetch_smollm2

# Bump when the recipe changes, so a cached file from an older recipe is not reused.
RECIPE_VERSION = 1
QWEN7B_GEOM_FILE = f"synth-qwen7b-geometry-v{RECIPE_VERSION}.gguf"
HYBRID_FILE = f"synth-lfm2-hybrid-v{RECIPE_VERSION}.gguf"
SEED = 20260101

QWEN7B_GEOMETRY = dict(n_layer=28, n_embd=512, n_head=4, n_head_kv=4, head_dim=128, n_ff=256,
                       context_length=131072, rope_freq_base=1_000_000.0)
QWEN7B_KV_BYTES_PER_TOKEN = 28 * 2 * 4 * 128 * 2  # 57,344

# lfm2: "c" = short-conv layer (recurrent conv state), "a" = attention layer.
HYBRID_LAYOUT = "ccacca"
# Qwen2.5-7B's matrices. The vocabulary is SmolLM2's (49,152 tokens, its tokenizer
# is the one we can copy), so the output head is a third of the real one's.
QWEN7B_FULL = dict(n_embd=3584, n_head=28, n_head_kv=4, head_dim=128, n_ff=18944,
                   context_length=131072, rope_freq_base=1_000_000.0)
# Bytes per block and weights per block of the raw quant layouts we write.
_QUANT_BLOCKS = {"Q4_K": (144, 256), "Q4_0": (18, 32)}

HYBRID_GEOMETRY = dict(n_embd=256, n_head=4, n_head_kv=2, n_ff=512, l_cache=3,
                       context_length=32768, rope_freq_base=1_000_000.0)


def _tokenizer_fields(src: Path) -> list[tuple[str, Any, GGUFValueType, GGUFValueType | None]]:
    """All tokenizer.* keys of a GGUF as (key, value, type, array sub-type)."""
    reader = GGUFReader(str(src))
    out = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            sub = field.types[-1]
            val = list(field.contents())
            out.append((key, val, vtype, sub))
        else:
            out.append((key, field.contents(), vtype, None))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
        raise DiskLLMError(f"{src}: no tokenizer.ggml.tokens to copy")
    return out


def _write_atomic(target: Path, fill: Callable[[GGUFWriter], None], arch: str,
                  write_data: Callable[[GGUFWriter], None] | None = None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix="." + target.name + ".", suffix=".part")
    os.close(fd)
    try:
        w = GGUFWriter(tmp, arch)
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        if write_data is None:  # tensors were added whole with add_tensor
            w.write_tensors_to_file()
        else:  # tensor infos were added; stream the data in the same order
            w.write_ti_data_to_file()
            write_data(w)
        w.close()
        os.replace(tmp, target)  # same directory: atomic
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


class _Weights:
    """Deterministic random tensors: f16 matrices (std 0.02), f32 ones for norms."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def mat(self, rows: int, cols: int, std: float = 0.02) -> np.ndarray:
        # numpy shape (rows, cols) = ggml ne {cols, rows}
        return (self.rng.standard_normal((rows, cols), dtype=np.float32) * std).astype(np.float16)

    @staticmethod
    def norm(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)


def _common_keys(w: GGUFWriter, name: str, n_layer: int, n_embd: int, ctx: int, n_ff: int,
                 n_head: int, rope_base: float, tokenizer: list,
                 file_type: LlamaFileType = LlamaFileType.MOSTLY_F16) -> None:
    w.add_name(name)
    w.add_file_type(file_type)
    w.add_block_count(n_layer)
    w.add_context_length(ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(rope_base)
    for key, val, vtype, sub in tokenizer:
        w.add_key_value(key, val, vtype, sub_type=sub)


def _n_vocab(tokenizer: list) -> int:
    return len(next(v for k, v, *_ in tokenizer if k == "tokenizer.ggml.tokens"))


def synthesize_qwen7b_geometry(dest_dir: str | os.PathLike[str] | None = None) -> Path:
    """llama-arch GGUF with Qwen2.5-7B's KV geometry (57,344 B/token f16), ~133 MB."""
    cache = Path(dest_dir) if dest_dir else default_cache_dir()
    target = cache / QWEN7B_GEOM_FILE
    if target.is_file():
        return target
    g = QWEN7B_GEOMETRY
    tok = _tokenizer_fields(fetch_smollm2())
    n_vocab, n_embd, hd = _n_vocab(tok), g["n_embd"], g["head_dim"]
    assert g["n_head"] * hd == n_embd

    def fill(w: GGUFWriter) -> None:
        _common_keys(w, "DiskLLM synthetic Qwen2.5-7B KV geometry", g["n_layer"], n_embd,
                     g["context_length"], g["n_ff"], g["n_head"], g["rope_freq_base"], tok)
        w.add_head_count_kv(g["n_head_kv"])
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd)
        w.add_vocab_size(n_vocab)
        r = _Weights(SEED)
        w.add_tensor("token_embd.weight", r.mat(n_vocab, n_embd))  # output tied to it
        w.add_tensor("output_norm.weight", r.norm(n_embd))
        kv = g["n_head_kv"] * hd
        for i in range(g["n_layer"]):
            p = f"blk.{i}."
            w.add_tensor(p + "attn_norm.weight", r.norm(n_embd))
            w.add_tensor(p + "attn_q.weight", r.mat(n_embd, n_embd))
            w.add_tensor(p + "attn_k.weight", r.mat(kv, n_embd))
            w.add_tensor(p + "attn_v.weight", r.mat(kv, n_embd))
            w.add_tensor(p + "attn_output.weight", r.mat(n_embd, n_embd))
            w.add_tensor(p + "ffn_norm.weight", r.norm(n_embd))
            w.add_tensor(p + "ffn_gate.weight", r.mat(g["n_ff"], n_embd))
            w.add_tensor(p + "ffn_up.weight", r.mat(g["n_ff"], n_embd))
            w.add_tensor(p + "ffn_down.weight", r.mat(n_embd, g["n_ff"]))

    return _write_atomic(target, fill, "llama")


def synthesize_hybrid(dest_dir: str | os.PathLike[str] | None = None) -> Path:
    """Tiny `lfm2` hybrid: short-conv layers (recurrent conv state) + attention layers."""
    cache = Path(dest_dir) if dest_dir else default_cache_dir()
    target = cache / HYBRID_FILE
    if target.is_file():
        return target
    g = HYBRID_GEOMETRY
    tok = _tokenizer_fields(fetch_smollm2())
    n_vocab, n_embd = _n_vocab(tok), g["n_embd"]
    hd = n_embd // g["n_head"]
    n_layer = len(HYBRID_LAYOUT)

    def fill(w: GGUFWriter) -> None:
        _common_keys(w, "DiskLLM synthetic lfm2 hybrid", n_layer, n_embd, g["context_length"],
                     g["n_ff"], g["n_head"], g["rope_freq_base"], tok)
        w.add_head_count_kv([g["n_head_kv"] if c == "a" else 0 for c in HYBRID_LAYOUT])
        w.add_shortconv_l_cache(g["l_cache"])
        w.add_vocab_size(n_vocab)
        r = _Weights(SEED + 1)
        w.add_tensor("token_embd.weight", r.mat(n_vocab, n_embd))  # output tied to it
        w.add_tensor("token_embd_norm.weight", r.norm(n_embd))  # lfm2's output norm name
        kv = g["n_head_kv"] * hd
        for i, kind in enumerate(HYBRID_LAYOUT):
            p = f"blk.{i}."
            w.add_tensor(p + "attn_norm.weight", r.norm(n_embd))
            if kind == "a":
                w.add_tensor(p + "attn_q_norm.weight", r.norm(hd))
                w.add_tensor(p + "attn_k_norm.weight", r.norm(hd))
                w.add_tensor(p + "attn_q.weight", r.mat(n_embd, n_embd))
                w.add_tensor(p + "attn_k.weight", r.mat(kv, n_embd))
                w.add_tensor(p + "attn_v.weight", r.mat(kv, n_embd))
                w.add_tensor(p + "attn_output.weight", r.mat(n_embd, n_embd))
            else:
                # ggml ne {l_cache, n_embd} -> numpy (n_embd, l_cache); kept f32 (ssm_conv)
                w.add_tensor(p + "shortconv.conv.weight",
                             r.mat(n_embd, g["l_cache"], std=0.3).astype(np.float32))
                w.add_tensor(p + "shortconv.in_proj.weight", r.mat(3 * n_embd, n_embd))
                w.add_tensor(p + "shortconv.out_proj.weight", r.mat(n_embd, n_embd))
            w.add_tensor(p + "ffn_norm.weight", r.norm(n_embd))
            w.add_tensor(p + "ffn_gate.weight", r.mat(g["n_ff"], n_embd))
            w.add_tensor(p + "ffn_up.weight", r.mat(g["n_ff"], n_embd))
            w.add_tensor(p + "ffn_down.weight", r.mat(n_embd, g["n_ff"]))

    return _write_atomic(target, fill, "lfm2")


def _quant_blocks(rng: np.random.Generator, rows: int, cols: int, quant: str) -> np.ndarray:
    """Random quantized rows with finite scales: (rows, bytes per row) uint8.

    Q4_K block (256 weights): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins,
    128 bytes of 4-bit quants; weight = d*sc*q - dmin*m. dmin = 7.5 d centres the
    weights (mean sc*q = 31.5*7.5 = mean m*7.5), |w| < 0.1, so activations and
    the f16 KV stay finite across 28 layers. Q4_0 block (32 weights): f16 d and
    16 bytes of nibbles, weight = d*(q-8).
    """
    block_bytes, block_weights = _QUANT_BLOCKS[quant]
    if cols % block_weights:
        raise DiskLLMError(f"{quant}: row length {cols} is not a multiple of {block_weights}")
    n_blocks = rows * cols // block_weights
    raw = np.frombuffer(rng.bytes(n_blocks * block_bytes), dtype=np.uint8).copy()
    blocks = raw.reshape(n_blocks, block_bytes)
    if quant == "Q4_K":
        blocks[:, 0:2] = np.frombuffer(np.float16(1e-4).tobytes(), dtype=np.uint8)
        blocks[:, 2:4] = np.frombuffer(np.float16(7.5e-4).tobytes(), dtype=np.uint8)
    else:
        blocks[:, 0:2] = np.frombuffer(np.float16(0.004).tobytes(), dtype=np.uint8)
    return raw.reshape(rows, cols // block_weights * block_bytes)


def qwen7b_full_file(n_layer: int = 28, quant: str = "Q4_K") -> str:
    return f"synth-qwen7b-full-{quant.lower()}-{n_layer}L-v{RECIPE_VERSION}.gguf"


def synthesize_qwen7b_full(n_layer: int = 28, quant: str = "Q4_K",
                           dest_dir: str | os.PathLike[str] | None = None) -> Path:
    """llama-arch GGUF with Qwen2.5-7B's matrix sizes in a repacked quant type.

    Streamed tensor by tensor, so writing the 3.9 GB file needs no more than one
    matrix (~38 MB) in memory. Norms stay f32 as in real quantized models.
    """
    if quant not in _QUANT_BLOCKS:
        raise DiskLLMError(f"quant {quant!r}: one of {', '.join(_QUANT_BLOCKS)}")
    cache = Path(dest_dir) if dest_dir else default_cache_dir()
    target = cache / qwen7b_full_file(n_layer, quant)
    if target.is_file():
        return target
    g = QWEN7B_FULL
    tok = _tokenizer_fields(fetch_smollm2())
    n_vocab, n_embd, hd, n_ff = _n_vocab(tok), g["n_embd"], g["head_dim"], g["n_ff"]
    kv = g["n_head_kv"] * hd
    qtype = getattr(GGMLQuantizationType, quant)
    # (name, rows, cols) of every quantized matrix, in file order; norms are (name, n).
    plan: list[tuple[str, int, int]] = [("token_embd.weight", n_vocab, n_embd)]
    norms: dict[str, int] = {"output_norm.weight": n_embd}
    order: list[str] = ["token_embd.weight", "output_norm.weight"]
    for i in range(n_layer):
        p = f"blk.{i}."
        norms[p + "attn_norm.weight"] = n_embd
        norms[p + "ffn_norm.weight"] = n_embd
        order += [p + "attn_norm.weight", p + "attn_q.weight", p + "attn_k.weight",
                  p + "attn_v.weight", p + "attn_output.weight", p + "ffn_norm.weight",
                  p + "ffn_gate.weight", p + "ffn_up.weight", p + "ffn_down.weight"]
        plan += [(p + "attn_q.weight", n_embd, n_embd), (p + "attn_k.weight", kv, n_embd),
                 (p + "attn_v.weight", kv, n_embd), (p + "attn_output.weight", n_embd, n_embd),
                 (p + "ffn_gate.weight", n_ff, n_embd), (p + "ffn_up.weight", n_ff, n_embd),
                 (p + "ffn_down.weight", n_embd, n_ff)]
    plan.append(("output.weight", n_vocab, n_embd))
    order.append("output.weight")
    mats = {name: (rows, cols) for name, rows, cols in plan}
    block_bytes, block_weights = _QUANT_BLOCKS[quant]

    def fill(w: GGUFWriter) -> None:
        _common_keys(w, f"DiskLLM synthetic Qwen2.5-7B dimensions {quant}", n_layer, n_embd,
                     g["context_length"], n_ff, g["n_head"], g["rope_freq_base"], tok,
                     LlamaFileType.MOSTLY_Q4_K_M if quant == "Q4_K" else LlamaFileType.MOSTLY_Q4_0)
        w.add_head_count_kv(g["n_head_kv"])
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd)
        w.add_vocab_size(n_vocab)
        for name in order:
            if name in norms:
                w.add_tensor_info(name, (norms[name],), np.dtype(np.float32), norms[name] * 4)
            else:
                rows, cols = mats[name]
                nbytes = rows * cols // block_weights * block_bytes
                w.add_tensor_info(name, (rows, cols // block_weights * block_bytes),
                                  np.dtype(np.uint8), nbytes, raw_dtype=qtype)

    def write_data(w: GGUFWriter) -> None:
        rng = np.random.default_rng(SEED + 2)
        for name in order:
            if name in norms:
                w.write_tensor_data(_Weights.norm(norms[name]))
            else:
                w.write_tensor_data(_quant_blocks(rng, *mats[name], quant))

    return _write_atomic(target, fill, "llama", write_data=write_data)


if __name__ == "__main__":  # python -m diskllm.testing.synth: write both
    print(synthesize_qwen7b_geometry())
    print(synthesize_hybrid())
