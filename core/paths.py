"""Where DiskLLM keeps its files."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from diskllm.core.env import env
from diskllm.core.errors import DiskLLMError


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def kv_cache(self) -> Path:
        return self.root / "kv_cache"

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    @property
    def repack(self) -> Path:
        """Repacked weights (patches/0005): one cache file per model, build and CPU."""
        return self.root / "repack"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def run(self) -> Path:
        """Registry of running servers (one JSON file per pid)."""
        return self.root / "run"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @classmethod
    def from_env(cls) -> "Home":
        value = env("DISKLLM_HOME")
        root = Path(value).expanduser() if value else Path.home() / ".diskllm"
        home = cls(root.absolute())
        home.check_root()
        return home

    def check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DiskLLMError(f"DISKLLM_HOME={self.root} is a file, not a folder: "
                               "point DISKLLM_HOME at a folder (or unset it)")

    def private_dirs(self) -> tuple[Path, ...]:
        """Folders holding conversation text or KV (prompts reach the logs): owner-only."""
        return (self.kv_cache, self.sessions, self.logs)

    def ensure(self) -> "Home":
        self.check_root()
        for d in (self.root, self.models, self.kv_cache, self.sessions,
                  self.logs, self.bin, self.src, self.run):
            try:
                d.mkdir(parents=True, exist_ok=True)
                if d in self.private_dirs():
                    os.chmod(d, 0o700)
            except OSError as e:
                raise DiskLLMError(f"cannot create {d} (DISKLLM_HOME={self.root}): {e.strerror}") from None
        return self


def build_cache_dir(home: Home) -> Path:
    """Where built llama-server binaries live; tests share one via the env var."""
    value = env("DISKLLM_BUILD_CACHE")
    return Path(value).expanduser().absolute() if value else home.bin
