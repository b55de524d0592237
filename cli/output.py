"""What the CLI prints: bytes, durations, ages, tables and the pull progress bar."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TextIO

from diskllm.core.pull.events import PullEvent
from diskllm.core.text import printable
from diskllm.core.units import human_bytes

__all__ = ["ProgressBar", "ago", "clock", "duration", "human_bytes", "say", "table"]


def say(line: str) -> None:
    """A progress or status line: stderr, so stdout stays the command's result."""
    print(printable(line, multiline=True), file=sys.stderr, flush=True)


def table(rows: Sequence[Sequence[str]], out: TextIO | None = None, gap: int = 2) -> None:
    """Left-aligned columns, the first row being the header."""
    out = out or sys.stdout
    rows = [[printable(c) for c in r] for r in rows]  # names come from URLs, registries, GGUFs
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print((" " * gap).join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def duration(s: float) -> str:
    """Uptime: 42s, 3m07s, 2h05m."""
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def clock(seconds: float | None) -> str:
    """An ETA: 05:07, 1:02:03, --:-- when unknown."""
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def ago(iso: str) -> str:
    """An ISO timestamp as `3 hours ago`, like `ollama list`."""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    s = (datetime.now(timezone.utc) - then).total_seconds()
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            k = int(s // n)
            return f"{k} {unit}{'s' if k > 1 else ''} ago"
    return "just now"


class ProgressBar:
    """Renders PullEvents on one terminal line (or plain lines when not a tty)."""

    def __init__(self, stream: TextIO | None = None, width: int = 24):
        self.stream = stream or sys.stderr  # looked up now: tests and redirects swap sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self._last_key: tuple[str, str] | None = None
        self._open = False

    def line(self, ev: PullEvent) -> str:
        if ev.bytes_total is None and not ev.bytes_done:
            return f"{ev.phase:<8} {ev.source}  {ev.file}"
        frac = ev.fraction
        if frac is None:
            bar, pct = " " * self.width, "    "
        else:
            filled = int(frac * self.width)
            bar, pct = "#" * filled + "." * (self.width - filled), f"{frac * 100:3.0f}%"
        size = human_bytes(ev.bytes_done) + (f"/{human_bytes(ev.bytes_total)}" if ev.bytes_total else "")
        rate = f"{human_bytes(ev.rate)}/s" if ev.rate else ""
        return f"{ev.phase:<8} [{bar}] {pct} {size:>17} {rate:>9} ETA {clock(ev.eta)} {ev.file}"

    def __call__(self, ev: PullEvent) -> None:
        if ev.message:
            self._newline()
            print(f"{ev.model}: {ev.message}", file=self.stream)
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(ev))
            self.stream.flush()
            self._open = True
        elif (ev.phase, ev.file) != self._last_key:
            print(self.line(ev), file=self.stream)
        self._last_key = (ev.phase, ev.file)

    def _newline(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False

    def close(self) -> None:
        self._newline()
        self.stream.flush()
