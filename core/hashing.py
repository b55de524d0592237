"""sha256 of files: one helper for builds, pulls, sessions and test models."""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 4 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a whole file, read in chunks (blocking: use asyncio.to_thread on a loop)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
