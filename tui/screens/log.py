"""Log view: the active server's log (and build/start progress lines)."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Log, Static

from .. import messages as m
from .base import PaneScreen


class LogScreen(PaneScreen):
    PANE = "log"
    CSS_PATH = "log.tcss"
    BINDINGS = [
        Binding("r", "restart", "Restart server", id="log.restart"),
        Binding("x", "stop", "Stop server", id="log.stop"),
        Binding("f", "follow", "Follow", id="log.follow"),
    ]

    def compose_pane(self) -> ComposeResult:
        yield Static("", id="log-title")
        yield Log(id="log", highlight=False, max_lines=5000, auto_scroll=True)

    def show_state(self) -> None:
        log = self.query_one(Log)
        log.clear()
        log.write_lines(list(self.bench.log_lines))
        self._title()

    def _title(self, extra: str = "") -> None:
        e = self.bench.server
        text = f"{e.log}" if e is not None else "no server log yet"
        self.query_one("#log-title", Static).update(text + extra)

    def on_log_lines(self, msg: m.LogLines) -> None:
        log = self.query_one(Log)
        if msg.reset:
            log.clear()
        log.write_lines(msg.lines)

    def on_server_started(self, msg: m.ServerStarted) -> None:
        self._title()

    def on_server_died(self, msg: m.ServerDied) -> None:
        self._title("  [b red]server died[/] · r restarts")

    def action_restart(self) -> None:
        self.bench.restart_server()

    def action_stop(self) -> None:
        self.bench.action_stop_server()

    def action_follow(self) -> None:
        log = self.query_one(Log)
        log.auto_scroll = True
        log.scroll_end(animate=False)
