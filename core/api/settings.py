"""Where the daemon listens, its key, and Ollama's keep_alive durations."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from diskllm.core.config import Config
from diskllm.core.env import env
from diskllm.core.errors import DiskLLMError

DEFAULT_KEEP_ALIVE = 300.0  # seconds, like Ollama's 5m


@dataclass
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 11434
    api_key: str | None = None
    keep_alive: float = DEFAULT_KEEP_ALIVE
    memory_budget: int | None = None  # bytes of model weights kept loaded; None = half the RAM

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_host(value: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port`, `:port` or `http://host:port` (OLLAMA_HOST's forms)."""
    v = value.strip()
    parts = urlsplit(v if "://" in v else "//" + v)
    try:
        port = parts.port or default_port
    except ValueError:
        raise DiskLLMError(f"bad address '{value}': the port must be 1-65535") from None
    return parts.hostname or "127.0.0.1", port


def api_settings(cfg: Config, *, host: str | None = None, port: int | None = None,
                 api_key: str | None = None) -> ApiSettings:
    """Flags beat DISKLLM_API_HOST, which beats OLLAMA_HOST, which beats config.toml."""
    h, p = cfg.api_host, cfg.api_port
    from_env = env("DISKLLM_API_HOST") or env("OLLAMA_HOST")
    if from_env:
        h, p = parse_host(from_env, p)
    if host:
        h, p = parse_host(host, p)
    return ApiSettings(host=h, port=port or p, api_key=api_key or env("DISKLLM_API_KEY") or cfg.api_key)


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: object, default: float) -> float:
    """Seconds from Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m").

    Negative means forever (float('inf')); None means the default."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise DiskLLMError(f"bad keep_alive {value!r}")
    if isinstance(value, (int, float)):
        secs = float(value)
    elif isinstance(value, str):
        v = value.strip()
        sign = -1.0 if v.startswith("-") else 1.0
        v = v.lstrip("+-")
        try:
            secs = float(v)
        except ValueError:
            parts = _PART.findall(v)
            if not parts or "".join(a + b for a, b in parts) != v:
                raise DiskLLMError(f"bad keep_alive '{value}' (e.g. 300, \"5m\", \"1h\", 0, -1)") from None
            secs = sum(float(a) * _UNITS[b] for a, b in parts)
        secs *= sign
    else:
        raise DiskLLMError(f"bad keep_alive {value!r}")
    return float("inf") if secs < 0 else secs
