"""Weight repacking: which weights the CPU backend repacks, and where the copy lives.

llama.cpp's CPU backend rearranges the weights of some quant types into an
interleaved layout at load (the CPU_REPACK buffer) so its matrix kernels run
faster. Upstream keeps that copy in anonymous memory: for a Q4_K_M model it is
nearly the whole model in private RAM. Our patch 0005 keeps it in a repack cache
file instead (`--repack-cache FILE`): written once, then mapped read-only, so the
weights stay page cache like the mmapped GGUF.

The file is keyed by what decides its bytes: the model file, the llama-server
build and the CPU's features (they pick the kernel layout). The server checks a
layout hash and a checksum as well, and rebuilds a stale or corrupt file.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
from functools import lru_cache
from pathlib import Path

from diskllm.core.models.gguf import GGUFInfo
from diskllm.core.paths import Home

# GGML types (ggml.h) the CPU backend repacks at this pin, by CPU feature
# (ggml/src/ggml-cpu/repack.cpp, ggml_repack_get_optimal_repack_type); a matrix is
# repacked when its row count is a multiple of 8 (4 on some ARM kernels).
Q4_0, Q8_0, Q2_K, Q4_K, Q5_K, Q6_K, IQ4_NL, MXFP4, Q1_0 = 2, 8, 10, 12, 13, 14, 20, 39, 41
REPACKED_X86_AVX2 = {Q4_0, Q4_K, IQ4_NL, MXFP4}
REPACKED_X86_AVX512 = REPACKED_X86_AVX2 | {Q2_K}
REPACKED_ARM = {Q4_0, Q4_K, Q5_K, Q6_K, IQ4_NL, MXFP4, Q8_0, Q1_0}


@lru_cache(maxsize=1)
def cpu_features() -> str:
    """The CPU's feature flags as the kernel reports them (they decide the repack layout)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    return platform.machine() + ":" + " ".join(sorted(set(m.group(1).split()))) if m else platform.machine()


def repacked_types(features: str | None = None) -> set[int]:
    """GGML types this CPU's backend repacks."""
    f = set((features or cpu_features()).split(":", 1)[-1].split())
    if "avx512f" in f:
        return REPACKED_X86_AVX512
    if "avx2" in f:
        return REPACKED_X86_AVX2
    if "i8mm" in f or "asimddp" in f:  # ARM: int8 matmul or dotprod kernels
        return REPACKED_ARM
    return set()


def repacked_bytes(info: GGUFInfo, features: str | None = None) -> int:
    """Bytes of weights the CPU backend would repack: matrices of a repacked type used by
    a matmul (not the token embedding, which is only looked up by row)."""
    types = repacked_types(features)
    return sum(t.n_bytes for t in info.tensors
               if t.type in types and len(t.shape) == 2 and t.shape[1] % 8 == 0
               and t.name != "token_embd.weight")


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _model_prefix(model: Path) -> str:
    """File-name prefix of every cached repack of one model file (any build, any CPU)."""
    where = hashlib.sha256(str(model.resolve()).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', model.stem)[:40]}-{where}-"


def repack_cache_path(home: Home, model: Path, binary: Path, features: str | None = None) -> Path:
    """Where the repacked weights of `model` under `binary` on this CPU are cached."""
    key = hashlib.sha256("\n".join((_file_identity(model), _file_identity(binary),
                                    features or cpu_features())).encode()).hexdigest()
    return home.repack / f"{_model_prefix(model)}{key[:16]}.bin"


def remove_repack_caches(home: Home, model: Path) -> int:
    """Delete every cached repack of `model` (any build, any CPU); returns bytes freed."""
    if not home.repack.is_dir():
        return 0
    prefix, freed = _model_prefix(model), 0
    for p in home.repack.iterdir():
        if p.name.startswith(prefix) and re.fullmatch(r"[0-9a-f]{16}\.bin(\.\d+)?(\.tmp\.\d+)?",
                                                       p.name[len(prefix):]):
            try:
                freed += p.stat().st_blocks * 512
                p.unlink()
            except OSError:
                pass
    return freed


def ensure_private_dir(path: Path) -> Path:
    """The repack folder holds copies of model weights: private like the KV files."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
