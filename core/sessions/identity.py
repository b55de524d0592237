"""What a session is bound to (model file, cache types, ctx) and whether a server can take it."""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diskllm.core.paths import Home
from diskllm.core.sessions.build_id import build_id_of
from diskllm.core.sessions.errors import SessionError, SessionMismatch
from diskllm.core.sessions.records import SessionMeta


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """Cheap identity of a GGUF file: sha256 of its size, first MiB and 16 spread 64 KiB samples.

    Reads about 2 MiB whatever the model size; different quants, finetunes and
    truncations all differ."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        size = p.stat().st_size
        h.update(str(size).encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > (1 << 20):
                for i in range(16):
                    f.seek((size - (1 << 16)) * (i + 1) // 16)
                    h.update(f.read(1 << 16))
    except OSError as e:
        raise SessionError(f"cannot read model {p}: {e.strerror}") from None
    return "fp1:" + h.hexdigest()


def _cache_types(argv: list[str]) -> tuple[str, str]:
    k = v = "f16"
    for i, a in enumerate(argv[:-1]):
        if a in ("-ctk", "--cache-type-k"):
            k = argv[i + 1]
        elif a in ("-ctv", "--cache-type-v"):
            v = argv[i + 1]
    for a in argv:
        if a.startswith("--cache-type-k="):
            k = a.split("=", 1)[1]
        elif a.startswith("--cache-type-v="):
            v = a.split("=", 1)[1]
    return k, v




def _index_digest(home: Home | None, path: Path) -> str | None:
    if home is None:
        return None
    with contextlib.suppress(Exception):
        from diskllm.core.models.index import ModelIndex
        for m in ModelIndex(home).all():
            if Path(m.path).resolve() == path.resolve():
                return m.digest
    return None


@dataclass
class ModelInfo:
    """What a session must match: the model and KV layout of the server it goes into."""
    name: str
    path: str
    fingerprint: str
    ctx: int
    digest: str | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    kv_backend: str = "ssd"
    build_id: str | None = None
    arch: str | None = None
    sliding_window: int | None = None  # set for SWA/iSWA models (restores may not be reusable)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], *, ctx: int, name: str | None = None,
                  cache_type_k: str = "f16", cache_type_v: str = "f16", kv_backend: str = "ssd",
                  binary: str | os.PathLike[str] | None = None, home: Home | None = None) -> "ModelInfo":
        p = Path(path).resolve()
        arch = window = None
        with contextlib.suppress(Exception):
            from diskllm.core.models.gguf import read_gguf_info
            gi = read_gguf_info(p)
            arch = gi.arch
            window = gi.sliding_window if gi.is_swa else None
        return cls(name=name or p.stem, path=str(p), fingerprint=model_fingerprint(p), ctx=ctx,
                   digest=_index_digest(home, p), cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                   kv_backend=kv_backend, build_id=build_id_of(binary), arch=arch, sliding_window=window)

    @classmethod
    def from_entry(cls, entry: Any, home: Home | None = None) -> "ModelInfo":
        """From a ServerEntry (registry of running servers) or a RunningServer."""
        entry = getattr(entry, "entry", entry)
        k, v = _cache_types(list(entry.argv))
        return cls.from_path(entry.model_path, ctx=entry.ctx, name=entry.model, cache_type_k=k,
                             cache_type_v=v, kv_backend=entry.kv_backend, binary=entry.binary, home=home)

    @property
    def kind(self) -> str:
        return "iSWA/SWA" if self.sliding_window else "dense"



def check_compatible(meta: SessionMeta, info: ModelInfo) -> None:
    """Refuse a restore that cannot be right. Rules (docs/sessions.md):

    - same model file identity (fingerprint), else refused;
    - same K and V cache types, else refused (the state holds raw cache rows);
    - the server's ctx must exceed the saved tokens (room for at least the next
      token); a different ctx that fits is fine, as is another KV backend (ssd/ram)."""
    if meta.model_fingerprint != info.fingerprint:
        raise SessionMismatch(
            f"session '{meta.name}' belongs to model {meta.model} ({meta.model_fingerprint[4:16]}), "
            f"the server runs {info.name} ({info.fingerprint[4:16]})"
        )
    if (meta.cache_type_k, meta.cache_type_v) != (info.cache_type_k, info.cache_type_v):
        raise SessionMismatch(
            f"session '{meta.name}' was saved with cache types k={meta.cache_type_k} v={meta.cache_type_v}, "
            f"the server uses k={info.cache_type_k} v={info.cache_type_v}"
        )
    if meta.tokens and meta.tokens >= info.ctx:
        raise SessionMismatch(
            f"session '{meta.name}' holds {meta.tokens} tokens (saved at ctx {meta.ctx}), "
            f"the server's ctx is {info.ctx}: start it with --ctx > {meta.tokens}"
        )
