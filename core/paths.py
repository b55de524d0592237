"""Where DiskLLM keeps its files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diskllm.core.env import env


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
        return cls(root.absolute())

    def ensure(self) -> "Home":
        for d in (self.root, self.models, self.kv_cache, self.sessions,
                  self.logs, self.bin, self.src, self.run):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                from diskllm.core.errors import DiskLLMError
                raise DiskLLMError(f"cannot create {d} (DISKLLM_HOME={self.root}): {e.strerror}") from None
        return self


def build_cache_dir(home: Home) -> Path:
    """Where built llama-server binaries live; tests share one via the env var."""
    value = env("DISKLLM_BUILD_CACHE")
    return Path(value).expanduser().absolute() if value else home.bin
