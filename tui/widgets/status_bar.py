"""The pane tabs (top line) and the server status bar (bottom line)."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..state import Status

PANES = (("models", "F1", "Models"), ("chat", "F2", "Chat"), ("sessions", "F3", "Sessions"),
         ("memory", "F4", "Memory"), ("log", "F5", "Log"))

_HEALTH_STYLE = {
    "healthy": ("●", "green"), "starting": ("◌", "yellow"), "loading": ("◌", "yellow"),
    "stopping": ("◌", "yellow"), "error": ("●", "red"), "dead": ("✖", "red"), "none": ("○", "grey50"),
}


class PaneTabs(Static):
    """`F1 Models  F2 Chat ...` with the current pane highlighted."""

    DEFAULT_CSS = """
    PaneTabs { height: 1; width: 1fr; background: $panel; color: $text-muted; }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def render(self) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(" DiskLLM ", style="bold")
        for mode, key, label in PANES:
            style = "bold reverse" if mode == self.current else ""
            t.append(" ")
            t.append(f" {key} {label} ", style=style)
        return t


class StatusBar(Static):
    """Model, port, backend, ctx and health of the active server; follows App.status."""

    DEFAULT_CSS = """
    StatusBar { height: 1; width: 1fr; background: $panel; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "status", self._show, init=True)

    def _show(self, status: Status) -> None:
        self.update(render_status(status))


def render_status(s: Status) -> Text:
    mark, colour = _HEALTH_STYLE.get(s.health, ("?", "white"))
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(f" {mark} ", style=f"bold {colour}")
    if s.health == "none":
        t.append("no server", style="dim")
        if s.note:
            t.append(f"  {s.note}", style="dim")
        t.append("  (F1 Models, s to start one)", style="dim")
        return t
    t.append(s.model or "?", style="bold")
    if s.port:
        t.append(f"  :{s.port}")
    if s.backend:
        t.append(f"  kv {s.backend}")
    if s.ctx:
        t.append(f"  ctx {s.ctx:,}")
    if s.pid:
        t.append(f"  pid {s.pid}", style="dim")
    t.append(f"  {s.health}", style=f"bold {colour}")
    if s.note and s.health in ("starting", "dead", "error", "stopping"):
        t.append(f"  {s.note}", style="dim")
    return t

