"""config.toml: user settings. Top-level keys are ours; tables belong to other modules."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

import tomli_w

from diskllm.core.atomic import atomic_write_text
from diskllm.core.env import env
from diskllm.core.errors import DiskLLMError
from diskllm.core.paths import Home

KV_BACKENDS = ("ssd", "ram")
# Where the CPU backend's repacked weights live (core/models/repack.py): "off" = no
# repacking (the default: measured no faster here, docs/how-it-works.md), "file" = the
# repack cache (page cache, not private RAM), "ram" = upstream's anonymous copy (the
# whole model in private RAM for Q4_K_M).
REPACK_MODES = ("file", "off", "ram")


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    ctx: int = 4096
    kv_window: int = 256
    kv_prefetch: int = 8  # MiB read ahead of compute once the KV no longer fits in RAM; 0 = off
    threads: int | None = None  # None = let llama-server choose
    kv_backend: str = "ssd"
    repack: str = "off"
    kv_budget: int | None = None  # MiB of KV + weights kept resident while paging; None = auto (cgroup / MemAvailable)
    server_binary: str | None = None
    # RPC workers (`diskllm worker` on other hosts), HOST:PORT; layers spread over them (core.rpc)
    rpc: list[str] = field(default_factory=list)
    # `diskllm serve`: the Ollama API's address and its Bearer key (None = no key)
    api_host: str = "127.0.0.1"
    api_port: int = 11434
    api_key: str | None = None
    # Sections owned by other modules ([registry], [keymap], ...), kept verbatim.
    extra: dict[str, Any] = field(default_factory=dict)
    # The env override must not leak into config.toml on save: remember both values.
    _file_binary: str | None = field(default=None, init=False, repr=False, compare=False)
    _env_binary: str | None = field(default=None, init=False, repr=False, compare=False)


_KEYS = {f.name for f in fields(Config) if f.init} - {"extra"}


def _check(cfg: Config, where: str) -> None:
    def bad(key: str, why: str) -> DiskLLMError:
        return DiskLLMError(f"{where}: '{key}' {why}")

    if not isinstance(cfg.host, str) or not cfg.host:
        raise bad("host", "must be a non-empty string")
    for key in ("port", "ctx", "kv_window"):
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise bad(key, f"must be a positive integer, got {v!r}")
    if not isinstance(cfg.kv_prefetch, int) or isinstance(cfg.kv_prefetch, bool) or cfg.kv_prefetch < 0:
        raise bad("kv_prefetch", f"must be an integer >= 0 (MiB; 0 = off), got {cfg.kv_prefetch!r}")
    if not 1 <= cfg.port <= 65535:
        raise bad("port", f"must be 1-65535, got {cfg.port}")
    if not isinstance(cfg.api_port, int) or isinstance(cfg.api_port, bool) or not 1 <= cfg.api_port <= 65535:
        raise bad("api_port", f"must be 1-65535, got {cfg.api_port!r}")
    if not isinstance(cfg.api_host, str) or not cfg.api_host:
        raise bad("api_host", "must be a non-empty string")
    if cfg.api_key is not None and (not isinstance(cfg.api_key, str) or not cfg.api_key):
        raise bad("api_key", "must be a non-empty string")
    if cfg.threads is not None and (
        not isinstance(cfg.threads, int) or isinstance(cfg.threads, bool) or cfg.threads <= 0
    ):
        raise bad("threads", f"must be a positive integer, got {cfg.threads!r}")
    if cfg.kv_backend not in KV_BACKENDS:
        raise bad("kv_backend", f"must be one of {', '.join(KV_BACKENDS)}, got {cfg.kv_backend!r}")
    if cfg.kv_budget is not None and (
        not isinstance(cfg.kv_budget, int) or isinstance(cfg.kv_budget, bool) or cfg.kv_budget <= 0
    ):
        raise bad("kv_budget", f"must be a positive integer (MiB; absent = auto), got {cfg.kv_budget!r}")
    if cfg.repack not in REPACK_MODES:
        raise bad("repack", f"must be one of {', '.join(REPACK_MODES)}, got {cfg.repack!r}")
    if cfg.server_binary is not None and not isinstance(cfg.server_binary, str):
        raise bad("server_binary", "must be a path string")
    if not isinstance(cfg.rpc, list):
        raise bad("rpc", f"must be a list of \"HOST:PORT\" strings, got {cfg.rpc!r}")
    from diskllm.core.rpc.endpoints import parse_endpoints
    parse_endpoints(cfg.rpc, f"{where}: 'rpc'")


def load_config(home: Home) -> Config:
    """Read config.toml (missing file = defaults); DISKLLM_LLAMA_SERVER overrides server_binary."""
    path = home.config_file
    cfg = Config()
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise DiskLLMError(f"{path} is not valid TOML: {e}") from None
        except OSError as e:
            raise DiskLLMError(f"cannot read {path}: {e.strerror}") from None
        for key, value in data.items():
            if isinstance(value, dict):
                cfg.extra[key] = value
            elif key in _KEYS:
                setattr(cfg, key, value)
            else:
                raise DiskLLMError(
                    f"{path}: unknown setting '{key}' (known: {', '.join(sorted(_KEYS))})"
                )
        _check(cfg, str(path))
    cfg._file_binary = cfg.server_binary
    binary = env("DISKLLM_LLAMA_SERVER")
    if binary:
        cfg.server_binary = cfg._env_binary = binary
    return cfg


def save_config(home: Home, cfg: Config) -> None:
    _check(cfg, "config")
    data: dict[str, Any] = {}
    for key in sorted(_KEYS):
        v = getattr(cfg, key)
        if key == "server_binary" and cfg._env_binary is not None and v == cfg._env_binary:
            v = cfg._file_binary
        if v is not None and v != []:  # TOML has no null: unset = absent
            data[key] = v
    for key, table in cfg.extra.items():
        data[key] = table
    atomic_write_text(home.config_file, tomli_w.dumps(data))
