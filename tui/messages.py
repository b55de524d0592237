"""The workbench's internal API: one dataclass Message per event.

Workers (the App's @work methods, over tui/services.py) post these to the App;
the App keeps the state and forwards each event to the pane screens
(App.fan_out). Tests inject fake data by posting the very same messages, so a
snapshot shows what a real run shows.

Every message here has bubble=False: the App forwards them to screens and a
bubbling copy would come straight back. High-rate ones (pull progress, memory
samples, live chat stats) implement can_replace: Textual drops a queued one when
a newer one of the same stream is behind it, so a busy UI shows the latest
figure instead of working through a backlog of redraws.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from diskllm.core.models.gguf import GGUFInfo
from diskllm.core.pull.events import PullEvent
from diskllm.core.server import PagingStats, ServerEntry


class Event(Message, bubble=False):
    """Base of the workbench's events."""

    def __init_subclass__(cls, bubble: bool | None = False, **kwargs: Any) -> None:
        # Message.__init_subclass__ defaults bubble to True for every subclass, which
        # sent each event a pane received straight back to the App (handled twice).
        super().__init_subclass__(bubble=bubble, **kwargs)


# --- models -----------------------------------------------------------------

@dataclass
class ModelRow:
    """One installed model as the Models pane lists it."""
    name: str
    size: int
    quant: str
    arch: str
    path: str
    info: GGUFInfo | None = None      # None when the header cannot be read
    served: bool = False              # a server of this model is running


@dataclass
class RegistryRow:
    name: str
    description: str
    sources: str


@dataclass
class ModelsLoaded(Event):
    installed: list[ModelRow]
    available: list[RegistryRow]      # registry names not installed yet
    default_ctx: int = 4096
    repack: str = "off"              # config `repack`: where repacked weights live


@dataclass
class PullProgress(Event):
    spec: str                         # what the user asked for (the pull's key)
    event: PullEvent

    def can_replace(self, message: Message) -> bool:
        # a note ("resuming", "trying the next source") is kept; plain byte counts are superseded
        return (isinstance(message, PullProgress) and message.spec == self.spec
                and not self.event.message)


@dataclass
class PullDone(Event):
    spec: str
    name: str | None = None           # installed name on success
    error: str | None = None          # one line, on failure
    cancelled: bool = False


# --- server -----------------------------------------------------------------

@dataclass
class ServerProgress(Event):
    """A line from a build or a server start (shown in the log and the status bar)."""
    line: str


@dataclass
class ServerStarted(Event):
    entry: ServerEntry
    info: GGUFInfo | None = None      # the served model's header: ram-backend estimate
    started_here: bool = True         # False: an already-running server was adopted


@dataclass
class ServerStartFailed(Event):
    model: str
    error: str


@dataclass
class ServerHealth(Event):
    pid: int
    status: str                       # "ok", "loading", "error"


@dataclass
class ServerDied(Event):
    entry: ServerEntry
    exit_code: int | None
    last_lines: list[str]


@dataclass
class ServerStopped(Event):
    entry: ServerEntry


# --- memory -----------------------------------------------------------------

@dataclass
class MemorySample(Event):
    """One reading of the running server's memory (bytes)."""
    pid: int
    time: float
    rss_anon: int
    rss_file: int
    kv_resident: int
    kv_disk: int
    sys_available: int
    vm_hwm: int = 0
    paging: PagingStats | None = None  # the server's paging figures (patches/0006), None if it has none

    @property
    def weights_resident(self) -> int:
        return max(0, self.rss_file - self.kv_resident)

    # Set by the App once the sample is in its history: only then may a newer one supersede
    # it (in the panes' queues; they redraw from the history, so nothing is lost).
    recorded: bool = field(default=False, init=False, compare=False, repr=False)

    def can_replace(self, message: Message) -> bool:
        return self.recorded and isinstance(message, MemorySample) and message.pid == self.pid


# --- log --------------------------------------------------------------------

@dataclass
class LogLines(Event):
    lines: list[str]
    reset: bool = False               # a new log file: clear the view first


# --- chat -------------------------------------------------------------------

@dataclass
class ChatStarted(Event):
    prompt: str


@dataclass
class ChatDelta(Event):
    """A piece of the reply; `reasoning` for <think> / reasoning_content text."""
    text: str
    reasoning: bool = False


@dataclass
class ChatStats(Event):
    """Live figures while a reply streams and final ones when it ends."""
    tokens_per_s: float
    ctx_used: int
    ctx_size: int
    final: bool = False

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ChatStats) and not self.final


@dataclass
class ChatFinished(Event):
    reply: str
    reasoning: str = ""
    cancelled: bool = False
    error: str | None = None


# --- sessions ---------------------------------------------------------------

@dataclass
class SessionRow:
    name: str
    model: str
    tokens: int
    size: int
    updated: str


@dataclass
class SessionsLoaded(Event):
    sessions: list[SessionRow]
    active: str | None = None
    error: str | None = None          # e.g. the sessions API is unavailable


@dataclass
class SessionSwitched(Event):
    """The active session changed: its transcript and what the switch cost."""
    name: str
    transcript: list[dict[str, Any]] = field(default_factory=list)
    restored_tokens: int = 0
    restore_ms: float = 0.0           # checksum + restore request (wall)
    server_restore_ms: float = 0.0    # llama-server's own timings.restore_ms
    total_ms: float = 0.0             # save of the previous session + restore + check
    saved: str = ""                   # "a: 123 tokens in 12 ms" when a session was saved first
    reuse: str = ""                   # ReuseReport.describe(): verified cache reuse
    verified: bool = False            # the server reused the restored KV (cache_n > 0)
    note: str = ""


@dataclass
class SessionFailed(Event):
    error: str
