"""A labelled figure with a sparkline of its recent history."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, Sparkline

from ..state import human_bytes


class MetricRow(Horizontal):
    DEFAULT_CSS = """
    MetricRow { height: 2; width: 1fr; }
    MetricRow .label { width: 17; }
    MetricRow .value { width: 8; text-align: right; margin-right: 1; text-style: bold; }
    MetricRow Sparkline { width: 1fr; height: 1; }
    """

    def __init__(self, label: str, key: str, help: str = "") -> None:
        super().__init__(id=f"metric-{key}")
        self.label, self.key = label, key
        self.tooltip = help or None

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="label")
        yield Label("-", classes="value")
        yield Sparkline([], summary_function=max)

    def show(self, values: list[int]) -> None:
        self.query_one(".value", Label).update(human_bytes(values[-1]) if values else "-")
        self.query_one(Sparkline).data = [float(v) for v in values]
