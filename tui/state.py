"""Plain data the App keeps between events (no textual imports needed here)."""
from __future__ import annotations

from dataclasses import dataclass

from diskllm.core.units import human_bytes as core_human_bytes


@dataclass(frozen=True)
class Status:
    """What the status bar shows; the App's `status` reactive holds one."""
    health: str = "none"        # none | starting | loading | healthy | error | dead | stopping
    model: str = ""
    port: int | None = None
    backend: str = ""
    ctx: int | None = None
    pid: int | None = None
    note: str = ""              # last progress line while starting

    @property
    def has_server(self) -> bool:
        return self.pid is not None and self.health not in ("dead", "none")


def human_bytes(n: float | None) -> str:
    """Binary units, compact enough for an 80-column table."""
    return core_human_bytes(n, "compact")


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
