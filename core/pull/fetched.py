"""What a source hands back to the pull orchestrator before validation and registration."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Fetched:
    source: str                 # provenance recorded in the index, e.g. "huggingface:org/repo/file.gguf"
    files: list[str]            # GGUF file names in the model folder, first part first
    digest: str                 # "sha256:HEX" of files[0]
    size: int                   # bytes of all GGUF files
    extra: dict[str, str] = field(default_factory=dict)  # side layers: kind -> file name
