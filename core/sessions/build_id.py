"""Which llama-server build wrote a slot state: its build cache key."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


def build_id_of(binary: str | os.PathLike[str] | None) -> str | None:
    """The build cache key (build.json "key") of a llama-server binary, if it has one."""
    if not binary:
        return None
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((Path(binary).parent / "build.json").read_text(encoding="utf-8"))
        key = doc.get("key")
        return f"{doc.get('flavor', 'diskllm')}-{key[:16]}" if key else None
    return None
