"""One running pull: name, bar, bytes, rate, ETA."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.widgets import Label, ProgressBar

from diskllm.core.pull.events import PullEvent

from ..state import clock, human_bytes


def describe_pull(ev: PullEvent | None) -> str:
    if ev is None:
        return "starting"
    if ev.phase == "download":
        total = human_bytes(ev.bytes_total) if ev.bytes_total else "?"
        rate = f"{human_bytes(ev.rate)}/s" if ev.rate else "-"
        return f"{human_bytes(ev.bytes_done)}/{total} {rate} eta {clock(ev.eta)}"
    return ev.message or ev.phase


class PullRow(Horizontal):
    DEFAULT_CSS = """
    PullRow { height: 1; width: 1fr; }
    PullRow .name { width: 22; text-overflow: ellipsis; text-wrap: nowrap; }
    PullRow ProgressBar { width: 22; }
    PullRow ProgressBar Bar { width: 14; }
    PullRow .detail { width: 1fr; color: $text-muted; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, spec: str, event: PullEvent | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.event = event

    def compose(self) -> ComposeResult:
        yield Label(self.spec, classes="name")
        yield ProgressBar(total=None, show_eta=False)
        yield Label("", classes="detail")

    def on_mount(self) -> None:
        self.show(self.event)

    def show(self, ev: PullEvent | None) -> None:
        self.event = ev
        try:
            bar = self.query_one(ProgressBar)
        except NoMatches:  # not composed yet: on_mount shows self.event
            return
        if ev is not None and ev.bytes_total:
            bar.update(total=ev.bytes_total, progress=min(ev.bytes_done, ev.bytes_total))
        self.query_one(".detail", Label).update(describe_pull(ev))
