"""Will the KV file fit? Checked before llama-server reserves it: on ext4 a failed
fallocate holds every free block until the file is unlinked, so an oversized --ctx
must never reach the server."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import GGUFInfo, read_gguf_info
from diskllm.core.sessions.identity import _cache_types
from diskllm.core.units import human_bytes

# bytes per element of llama.cpp's KV cache types (block types: block bytes / 32)
TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
              "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32}
# what the server prints when its reservation fails
SERVER_DISK_FULL = re.compile(r"not enough disk space|failed to fit params|No space left on device", re.I)


class KVSpaceError(DiskLLMError):
    pass


def kv_need(info: GGUFInfo, ctx: int, server_args: list[str], layers: range | None = None) -> int:
    """Bytes of the KV file; `layers`: only these (the main host's share of an RPC split)."""
    k, v = _cache_types(server_args)
    per = (TYPE_BYTES.get(k.lower(), 2.0) + TYPE_BYTES.get(v.lower(), 2.0)) / 2
    if layers is None:
        return info.kv_bytes(ctx, per)
    return sum(info.layer_kv_bytes(il, ctx, per) for il in layers)


def disk_line(need: int, free: int, directory: Path, ctx: int) -> str:
    return (f"not enough disk space for the KV cache at --ctx {ctx}: need {human_bytes(need, 'binary')}, "
            f"{human_bytes(free, 'binary')} free in {directory} (lower --ctx or free space there)")


def check_kv_space(kv_dir: Path, info: GGUFInfo, ctx: int, server_args: list[str],
                   layers: range | None = None) -> None:
    """KVSpaceError with the disk-space line when the KV file cannot fit."""
    need = kv_need(info, ctx, server_args, layers)
    free = shutil.disk_usage(kv_dir).free
    if need > free:
        raise KVSpaceError(disk_line(need, free, kv_dir, ctx))


def explain_start_failure(log_text: str, kv_dir: Path, model_path: Path, ctx: int,
                          server_args: list[str]) -> str | None:
    """The disk-space line for a server that failed to reserve its KV, else None."""
    if not SERVER_DISK_FULL.search(log_text):
        return None
    try:
        need = kv_need(read_gguf_info(model_path), ctx, server_args)
    except DiskLLMError:
        return None
    return disk_line(need, shutil.disk_usage(kv_dir).free, kv_dir, ctx)
