"""PaneScreen: the frame every pane shares (tabs, content, status bar, footer)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from ..widgets.status_bar import PaneTabs, StatusBar

if TYPE_CHECKING:
    from ..app import Workbench


class PaneScreen(Screen):
    """A pane: registers with the App so App.fan_out can forward events to it."""

    PANE = ""

    @property
    def bench(self) -> "Workbench":
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield PaneTabs(self.PANE)
        yield from self.compose_pane()
        yield StatusBar()
        yield Footer(compact=True)

    def compose_pane(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.bench.panes[self.PANE] = self
        self.show_state()

    def on_unmount(self) -> None:
        if self.bench.panes.get(self.PANE) is self:
            del self.bench.panes[self.PANE]

    def show_state(self) -> None:
        """Render from the App's current state (on mount and after bulk changes)."""
