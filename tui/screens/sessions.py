"""Sessions pane: list, create, rename, delete, export; switch with one key (enter)."""
from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from .. import messages as m
from ..state import human_bytes
from .base import PaneScreen
from .dialogs import ConfirmScreen, PromptScreen


class SessionsScreen(PaneScreen):
    PANE = "sessions"
    CSS_PATH = "sessions.tcss"
    BINDINGS = [
        Binding("s,enter", "switch", "Switch", id="sessions.switch"),
        Binding("n", "new", "New", id="sessions.new"),
        Binding("r", "rename", "Rename", id="sessions.rename"),
        Binding("d", "delete", "Delete", id="sessions.delete"),
        Binding("e", "export", "Export", id="sessions.export"),
        Binding("g", "refresh", "Refresh", show=False, id="sessions.refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[m.SessionRow] = []

    def compose_pane(self) -> ComposeResult:
        yield Label("Sessions · enter switches: saves the active session's KV, restores the target's",
                    classes="title")
        yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        yield Static("No switch yet.", id="switch-report")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("", "NAME", "MODEL", "TOKENS", "SIZE", "UPDATED")
        super().on_mount()

    def show_state(self) -> None:
        if self.bench.sessions is not None:
            self._show(self.bench.sessions)

    def _show(self, loaded: m.SessionsLoaded) -> None:
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear()
        self.rows = loaded.sessions
        for r in self.rows:
            table.add_row("▶" if r.name == loaded.active else " ", r.name, r.model, f"{r.tokens:,}",
                          human_bytes(r.size), r.updated, key=r.name)
        if self.rows:
            table.move_cursor(row=min(max(keep, 0), len(self.rows) - 1))
        if loaded.error:
            self.query_one("#switch-report", Static).update(f"[red]{loaded.error}[/]")
        elif not self.rows:
            self.query_one("#switch-report", Static).update(
                "No sessions yet: n creates one for the running server's model.")

    def _selected(self) -> m.SessionRow | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row < 0:
            return None
        return self.rows[min(table.cursor_row, len(self.rows) - 1)]

    # --- events -----------------------------------------------------------------
    def on_sessions_loaded(self, msg: m.SessionsLoaded) -> None:
        self._show(msg)

    def on_session_switched(self, msg: m.SessionSwitched) -> None:
        lines = [f"[b]Active: {msg.name}[/b] · {len(msg.transcript)} messages"]
        if msg.saved:
            lines.append(msg.saved)
        lines.append(f"restored {msg.restored_tokens:,} tokens in {msg.restore_ms:.0f} ms "
                     f"(server {msg.server_restore_ms:.0f} ms) · whole switch {msg.total_ms:.0f} ms")
        if msg.reuse:
            mark = "[green]✔ cache reuse verified[/]" if msg.verified else "[yellow]✖ no cache reuse[/]"
            lines.append(f"{mark}: {msg.reuse}")
        if msg.note:
            lines.append(msg.note)
        self.query_one("#switch-report", Static).update("\n".join(lines))

    def on_session_failed(self, msg: m.SessionFailed) -> None:
        self.query_one("#switch-report", Static).update(f"[red]{msg.error}[/]")

    # --- actions ------------------------------------------------------------------
    @on(DataTable.RowSelected)
    def _enter(self) -> None:
        self.action_switch()

    def action_switch(self) -> None:
        row = self._selected()
        if row is None:
            self.notify("no session selected", severity="warning")
            return
        self.query_one("#switch-report", Static).update(f"switching to {row.name}…")
        self.bench.switch_session(row.name)

    def action_new(self) -> None:
        def got(name: str | None) -> None:
            if name:
                self.query_one("#switch-report", Static).update(f"creating {name}…")
                self.bench.switch_session(name, create=True)

        self.app.push_screen(PromptScreen("New session name (letters, digits, . _ -)", placeholder="notes"), got)

    def action_rename(self) -> None:
        row = self._selected()
        if row is None:
            return

        def got(new: str | None) -> None:
            if new and new != row.name:
                self.bench.rename_session(row.name, new)

        self.app.push_screen(PromptScreen(f"Rename {row.name} to", value=row.name), got)

    def action_delete(self) -> None:
        row = self._selected()
        if row is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.bench.delete_session(row.name)

        self.app.push_screen(ConfirmScreen(f"Delete session [b]{row.name}[/b] and its saved KV?"), confirmed)

    def action_export(self) -> None:
        row = self._selected()
        if row is None:
            return

        def got(path: str | None) -> None:
            if path:
                self.bench.export_session(row.name, path)

        self.app.push_screen(PromptScreen(f"Export {row.name} as Markdown to",
                                          value=str(Path.cwd() / f"{row.name}.md")), got)

    def action_refresh(self) -> None:
        self.bench.refresh_sessions()
