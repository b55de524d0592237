"""Models pane: installed models, names to pull, pulls in flight, start/stop."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Label

from diskllm.core.models.show import estimate_memory

from .. import messages as m
from ..state import human_bytes
from ..widgets.pull_row import PullRow
from .base import PaneScreen
from .dialogs import ConfirmScreen, PromptScreen, StartServerScreen

CTX_STEPS = (2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)


def pull_status(ev) -> str:
    """Short STATUS cell of a registry name being pulled (details are in the pull rows)."""
    if ev is None:
        return "pulling"
    if ev.phase == "download" and ev.fraction is not None:
        return f"{100 * ev.fraction:.0f}%"
    return ev.phase


class ModelsScreen(PaneScreen):
    PANE = "models"
    CSS_PATH = "models.tcss"
    BINDINGS = [
        Binding("s", "start", "Start", id="models.start"),
        Binding("x", "stop", "Stop", id="models.stop"),
        Binding("p", "pull", "Pull", id="models.pull"),
        Binding("a", "pull_prompt", "Pull name…", show=False, id="models.pull_name"),
        Binding("c", "cancel_pull", "Cancel", id="models.cancel"),
        Binding("d", "delete", "Delete", id="models.delete"),
        Binding("plus,equals_sign", "ctx(1)", "ctx", key_display="+/-", id="models.ctx_up"),
        Binding("minus", "ctx(-1)", "ctx-", show=False, id="models.ctx_down"),
        Binding("r", "refresh", "Refresh", show=False, id="models.refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.ctx = 4096
        self.ctx_chosen = False
        self.rows: list[m.ModelRow] = []
        self.available: list[m.RegistryRow] = []

    def compose_pane(self) -> ComposeResult:
        with Vertical(id="models-body"):
            yield Label("", id="installed-title", classes="title")
            yield DataTable(id="installed", cursor_type="row", zebra_stripes=True)
            yield Label("Available to pull", classes="title")
            yield DataTable(id="available", cursor_type="row")
            yield Vertical(id="pulls")

    def on_mount(self) -> None:
        inst = self.query_one("#installed", DataTable)
        inst.add_columns("", "NAME", "SIZE", "QUANT", "ARCH", "RAM priv", "SSD priv", "KV on SSD")
        avail = self.query_one("#available", DataTable)
        avail.add_columns("NAME", "SOURCES", "STATUS", "DESCRIPTION")
        super().on_mount()

    # --- rendering --------------------------------------------------------------
    def show_state(self) -> None:
        if self.bench.models is not None:
            self._show_models(self.bench.models)
        pulls = self.query_one("#pulls")
        pulls.remove_children()
        for state in self.bench.pulls.values():
            pulls.mount(PullRow(state.spec, state.event))
        self._title()

    def _title(self) -> None:
        self.query_one("#installed-title", Label).update(
            f"Installed · memory at ctx {self.ctx:,} (+/- changes ctx)")

    def _show_models(self, loaded: m.ModelsLoaded) -> None:
        if not self.ctx_chosen:
            self.ctx = loaded.default_ctx
        self.rows, self.available = loaded.installed, loaded.available
        inst = self.query_one("#installed", DataTable)
        keep = inst.cursor_row
        inst.clear()
        for r in self.rows:
            if r.info is not None:
                e = estimate_memory(r.info, self.ctx, r.size, loaded.repack)
                ram, disk = human_bytes(e.ram_private), human_bytes(e.kv)
                ssd = human_bytes(e.ssd_private) if e.ssd_private else "~0"
            else:
                ram = ssd = disk = "?"
            inst.add_row("●" if r.served else " ", r.name, human_bytes(r.size), r.quant, r.arch,
                         ram, ssd, disk, key=r.name)
        if self.rows:
            inst.move_cursor(row=min(keep, len(self.rows) - 1))
        self._show_available()
        self._title()

    def _show_available(self) -> None:
        avail = self.query_one("#available", DataTable)
        keep = avail.cursor_row
        avail.clear()
        for r in self.available:
            state = self.bench.pulls.get(r.name)
            status = pull_status(state.event) if state else ""
            desc = r.description if len(r.description) <= 40 else r.description[:39] + "…"
            avail.add_row(r.name, r.sources, status, desc, key=r.name)
        if self.available:
            avail.move_cursor(row=min(keep, len(self.available) - 1))

    # --- events from the App ------------------------------------------------------
    def on_models_loaded(self, msg: m.ModelsLoaded) -> None:
        self._show_models(msg)

    def on_pull_progress(self, msg: m.PullProgress) -> None:
        for row in self.query(PullRow):
            if row.spec == msg.spec:
                row.show(msg.event)
                break
        else:
            self.query_one("#pulls").mount(PullRow(msg.spec, msg.event))
        if any(r.name == msg.spec for r in self.available):
            self.query_one("#available", DataTable).update_cell(msg.spec, self._status_column(),
                                                                pull_status(msg.event), update_width=True)

    def _status_column(self):
        return self.query_one("#available", DataTable).ordered_columns[2].key

    def on_pull_done(self, msg: m.PullDone) -> None:
        for row in self.query(PullRow):
            if row.spec == msg.spec:
                row.remove()
        self._show_available()

    def on_server_started(self, msg: m.ServerStarted) -> None:
        pass  # the App refreshes the model list (served marks)

    # --- actions ----------------------------------------------------------------
    def _selected_installed(self) -> m.ModelRow | None:
        table = self.query_one("#installed", DataTable)
        if not self.rows or table.cursor_row < 0:
            return None
        return self.rows[min(table.cursor_row, len(self.rows) - 1)]

    def _selected_available(self) -> m.RegistryRow | None:
        table = self.query_one("#available", DataTable)
        if not self.available or table.cursor_row < 0:
            return None
        return self.available[min(table.cursor_row, len(self.available) - 1)]

    def action_start(self) -> None:
        row = self._selected_installed()
        if row is None:
            self.notify("no installed model selected (pull one first: p / a)", severity="warning")
            return

        def chosen(result: tuple[int, str, list[str], int | None] | None) -> None:
            if result:
                ctx, backend, rpc, ngl = result
                self.bench.start_model(row.name, row.path, ctx, backend, rpc, ngl)
                over = f", over {len(rpc)} worker{'s' if len(rpc) > 1 else ''}" if rpc else ""
                self.notify(f"starting {row.name} (ctx {ctx:,}, kv {backend}{over})")

        self.app.push_screen(StartServerScreen(row.name, row.info, self.ctx, self.bench.cfg.kv_backend,
                                                self.bench.cfg.repack, self.bench.cfg.rpc, self.bench.cfg.kv_budget),
                             chosen)

    @on(DataTable.RowSelected, "#installed")
    def _enter_installed(self) -> None:
        self.action_start()

    @on(DataTable.RowSelected, "#available")
    def _enter_available(self) -> None:
        self.action_pull()

    def action_stop(self) -> None:
        self.bench.action_stop_server()

    def action_pull(self) -> None:
        if self.focused is self.query_one("#available") or self.focused is None:
            row = self._selected_available()
            if row is not None:
                self.bench.start_pull(row.name)
                return
        self.action_pull_prompt()

    def action_pull_prompt(self) -> None:
        def got(spec: str | None) -> None:
            if spec:
                self.bench.start_pull(spec)

        self.app.push_screen(PromptScreen("Pull a model: registry name, ns/name:tag, org/repo[:QUANT] or .gguf URL",
                                          placeholder="smollm2:135m"), got)

    def action_cancel_pull(self) -> None:
        pulls = self.bench.pulls
        if not pulls:
            self.notify("no pull is running", severity="warning")
            return
        row = self._selected_available()
        spec = row.name if row is not None and row.name in pulls else list(pulls)[-1]
        self.bench.cancel_pull(spec)
        self.notify(f"cancelling {spec}…")

    def action_delete(self) -> None:
        row = self._selected_installed()
        if row is None:
            return
        if row.served:
            self.notify(f"{row.name} is being served; stop the server first (x)", severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.bench.delete_model(row.name)

        self.app.push_screen(ConfirmScreen(f"Delete [b]{row.name}[/b] ({human_bytes(row.size)})?"), confirmed)

    def action_ctx(self, step: int) -> None:
        steps = list(CTX_STEPS)
        if self.ctx not in steps:
            steps = sorted(set(steps) | {self.ctx})
        i = max(0, min(len(steps) - 1, steps.index(self.ctx) + step))
        self.ctx, self.ctx_chosen = steps[i], True
        if self.bench.models is not None:
            self._show_models(self.bench.models)
        self._title()

    def action_refresh(self) -> None:
        self.bench.refresh_models()
