"""Read what DiskLLM needs from a GGUF header (architecture, size, KV geometry).

gguf.GGUFReader decodes every metadata array into Python objects, which takes
~10 s for Gemma-3's 262K-token vocabulary; a run should not wait for that. So
the header is walked here with struct over an mmap (arrays are skipped, not
decoded) and the gguf package supplies the type tables.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from diskllm.core.errors import DiskLLMError

GGUF_MAGIC = b"GGUF"
_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
# Arrays longer than this are skipped (vocabularies); per-layer arrays are short.
_MAX_DECODED_ARRAY = 4096
# llama.cpp hard-codes the SWA layer pattern for these archs (hparams.set_swa_pattern).
_SWA_PATTERN_BY_ARCH = {"gemma2": 2, "gemma3": 6, "cohere2": 4}


class GGUFError(DiskLLMError):
    """The file is missing, not a GGUF, truncated or unreadable."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml ne order: shape[0] is the row length
    type: int               # GGML type id (ggml.h)
    n_bytes: int


@dataclass
class GGUFInfo:
    path: Path
    file_size: int
    version: int
    arch: str
    name: str | None
    file_type: int | None
    quant: str  # e.g. "Q4_K_M"
    n_params: int
    n_tensors: int
    n_layer: int
    n_embd: int | None
    n_head: int | list[int]
    n_head_kv: int | list[int]  # per-layer list for some archs (0 = no attention)
    head_dim_k: int
    head_dim_v: int
    context_length: int | None  # trained context
    sliding_window: int | None
    swa_layers: list[bool] = field(default_factory=list)  # True = sliding-window layer
    has_chat_template: bool = False
    tensors: list[TensorInfo] = field(default_factory=list)
    pooling_type: int | None = None  # {arch}.pooling_type: set by embedding models

    def _heads_kv(self, il: int) -> int:
        h = self.n_head_kv
        return h[il] if isinstance(h, list) else h

    def _layer_bytes(self, il: int, type_bytes: float) -> float:
        h = self._heads_kv(il)
        return (h * self.head_dim_k + h * self.head_dim_v) * type_bytes

    def kv_bytes_per_token(self, type_bytes: float = 2) -> int:
        """KV bytes per cached token over all layers (f16 by default)."""
        return int(sum(self._layer_bytes(il, type_bytes) for il in range(self.n_layer)))

    @property
    def is_swa(self) -> bool:
        return bool(self.sliding_window) and any(self.swa_layers)

    def kv_bytes_split(self, ctx: int, type_bytes: float = 2) -> tuple[int, int]:
        """(sliding-window layers, full-attention layers) KV bytes at context `ctx`.

        SWA layers hold min(ctx, window) cells (llama.cpp pads by n_ubatch; ignored)."""
        swa = full = 0.0
        for il in range(self.n_layer):
            per_tok = self._layer_bytes(il, type_bytes)
            if self.sliding_window and il < len(self.swa_layers) and self.swa_layers[il]:
                swa += per_tok * min(ctx, self.sliding_window)
            else:
                full += per_tok * ctx
        return int(swa), int(full)

    def layer_kv_bytes(self, il: int, ctx: int, type_bytes: float = 2) -> int:
        """KV bytes of layer `il` at context `ctx` (a sliding-window layer holds min(ctx, window) cells)."""
        swa = self.sliding_window and il < len(self.swa_layers) and self.swa_layers[il]
        return int(self._layer_bytes(il, type_bytes) * (min(ctx, self.sliding_window) if swa else ctx))

    def kv_bytes(self, ctx: int, type_bytes: float = 2) -> int:
        swa, full = self.kv_bytes_split(ctx, type_bytes)
        return swa + full


class _Truncated(Exception):
    pass


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0

    def need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Truncated()

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def string(self) -> str:
        n = self.unpack("<Q")
        self.need(n)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        self.need(n)
        self.pos += n

    def value(self, vtype: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            itype = self.unpack("<I")
            count = self.unpack("<Q")
            if itype in _SCALAR:
                width = struct.calcsize(_SCALAR[itype])
                self.need(count * width)
                if count > _MAX_DECODED_ARRAY:
                    self.pos += count * width
                    return None
                fmt = "<" + _SCALAR[itype][1] * count
                v = list(struct.unpack_from(fmt, self.buf, self.pos))
                self.pos += count * width
                return v
            if itype == GGUFValueType.STRING:
                for _ in range(count):
                    self.skip_string()
                return None
            if itype == GGUFValueType.ARRAY:
                for _ in range(count):
                    self.value(GGUFValueType.ARRAY)
                return None
            raise ValueError(f"unknown array item type {itype}")
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        raise ValueError(f"unknown metadata value type {vtype}")


def _quant_name(file_type: int | None, tensor_types: dict[int, int]) -> str:
    if file_type is not None:
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    if tensor_types:  # fall back to the type holding most elements
        t = max(tensor_types, key=tensor_types.__getitem__)
        try:
            return GGMLQuantizationType(t).name
        except ValueError:
            pass
    return "unknown"


def _parse(path: Path, buf: mmap.mmap | bytes, size: int) -> GGUFInfo:
    c = _Cursor(buf, size)
    if size < 4 or bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (bad magic)")
    c.pos = 4
    version = c.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: unsupported GGUF version {version}")
    n_tensors = c.unpack("<Q")
    n_kv = c.unpack("<Q")
    if n_tensors > 1 << 24 or n_kv > 1 << 24:
        raise GGUFError(f"{path}: corrupt GGUF header (absurd counts)")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = c.string()
        vtype = c.unpack("<I")
        meta[key] = c.value(vtype)
    tensors: list[tuple[str, tuple[int, ...], int, int]] = []  # (name, shape, type, offset)
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.unpack("<I")
        if n_dims > 8:
            raise GGUFError(f"{path}: corrupt tensor info (n_dims={n_dims})")
        shape = tuple(c.unpack("<Q") for _ in range(n_dims))
        ttype = c.unpack("<I")
        offset = c.unpack("<Q")
        tensors.append((name, shape, ttype, offset))
    align = meta.get("general.alignment") or 32
    data_start = (c.pos + align - 1) // align * align

    data_end = data_start
    n_params = 0
    by_type: dict[int, int] = {}
    infos: list[TensorInfo] = []
    for name, shape, ttype, offset in tensors:
        n_el = math.prod(shape)
        n_params += n_el
        by_type[ttype] = by_type.get(ttype, 0) + n_el
        try:
            block, tsize = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise GGUFError(f"{path}: unknown tensor type {ttype}") from None
        n_bytes = n_el // block * tsize
        infos.append(TensorInfo(name, shape, ttype, n_bytes))
        data_end = max(data_end, data_start + offset + n_bytes)
    if data_end > size:
        raise GGUFError(
            f"{path} is truncated: tensor data needs {data_end} bytes, file has {size}"
        )

    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(f"{path}: GGUF has no general.architecture")

    def hp(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_layer = int(hp("block_count", 0) or 0)
    n_embd = hp("embedding_length")
    n_head = hp("attention.head_count", 0) or 0
    n_head_kv = hp("attention.head_count_kv", n_head)
    n_head_kv = n_head_kv if n_head_kv is not None else n_head
    first_head = n_head if isinstance(n_head, int) else max(n_head or [0])
    dim_default = n_embd // first_head if n_embd and first_head else 0
    head_dim_k = int(hp("attention.key_length", dim_default) or 0)
    head_dim_v = int(hp("attention.value_length", dim_default) or 0)

    sliding_window = hp("attention.sliding_window") or None
    swa_layers: list[bool] = []
    if sliding_window:
        pattern = hp("attention.sliding_window_pattern")
        if isinstance(pattern, list):  # per-layer bools
            swa_layers = [bool(x) for x in pattern][:n_layer]
        else:
            n_pattern = pattern if isinstance(pattern, int) else _SWA_PATTERN_BY_ARCH.get(arch)
            if n_pattern is not None:
                # llama.cpp: layer il is SWA iff il % n_pattern < n_pattern - 1 (0 = all SWA)
                swa_layers = [n_pattern == 0 or il % n_pattern < n_pattern - 1
                              for il in range(n_layer)]
            else:
                swa_layers = [True] * n_layer

    file_type = meta.get("general.file_type")
    return GGUFInfo(
        path=path,
        file_size=size,
        version=version,
        arch=arch,
        name=meta.get("general.name"),
        file_type=file_type,
        quant=_quant_name(file_type, by_type),
        n_params=n_params,
        n_tensors=n_tensors,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        context_length=hp("context_length"),
        sliding_window=sliding_window,
        swa_layers=swa_layers,
        has_chat_template="tokenizer.chat_template" in meta,
        tensors=infos,
        pooling_type=hp("pooling_type"),
    )


def read_gguf_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Parse a GGUF header; raise GGUFError with a one-line reason if unusable."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GGUFError(f"{path} is a directory, not a GGUF file") from None
    except OSError as e:
        raise GGUFError(f"cannot read {path}: {e.strerror}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                head = f.read(4)
                if head != GGUF_MAGIC:
                    raise GGUFError(f"{path} is not a GGUF file (bad magic)")
                raise GGUFError(f"{path} is truncated ({size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                try:
                    return _parse(path, mm, size)
                except _Truncated:
                    raise GGUFError(f"{path} is truncated (header/metadata runs past end of file)") from None
                except (ValueError, struct.error, OverflowError) as e:
                    raise GGUFError(f"{path}: corrupt GGUF ({e})") from None
        except OSError as e:
            raise GGUFError(f"cannot read {path}: {e.strerror or e}") from None
