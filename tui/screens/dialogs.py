"""Small modal screens: start-server form, confirm, text prompt, dead server."""
from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, RadioButton, RadioSet, Static

from diskllm.core.errors import DiskLLMError
from diskllm.core.memory_budget import Budget, budget_text, estimate_streaming, start_budget, streaming_text
from diskllm.core.models.gguf import GGUFInfo
from diskllm.core.models.show import estimate_memory, weights_text
from diskllm.core.rpc.endpoints import parse_endpoints
from diskllm.core.rpc.split import plan_split

from ..state import human_bytes


class Dialog(ModalScreen):
    CSS_PATH = "dialogs.tcss"
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel", id="dialog.cancel")]

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class ConfirmScreen(Dialog):
    """y / enter confirms, n / esc cancels."""

    BINDINGS = [
        Binding("y,enter", "yes", "Yes", id="dialog.yes"),
        Binding("n,escape", "no", "No", id="dialog.no"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question")
            yield Static("[b]y[/b]/enter yes   [b]n[/b]/esc no", classes="hint")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


class PromptScreen(Dialog):
    """One line of text; enter accepts, esc cancels."""

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.title_text, self.value, self.placeholder = title, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="question")
            yield Input(self.value, placeholder=self.placeholder, id="prompt")
            yield Static("enter ok   esc cancel", classes="hint")

    @on(Input.Submitted)
    def _submit(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class StartServerScreen(Dialog):
    """ctx and KV backend for a new server; shows the memory estimate as you type.

    Dismisses with (ctx, backend, rpc workers, ngl or None) or None."""

    BINDINGS = [
        Binding("escape", "dismiss_none", "Cancel", id="dialog.cancel"),
        Binding("ctrl+s", "submit", "Start", id="dialog.start"),
    ]

    def __init__(self, model: str, info: GGUFInfo | None, ctx: int, backend: str, repack: str = "off",
                 rpc: list[str] | None = None, kv_budget: int | None = None) -> None:
        super().__init__()
        self.model, self.info, self.ctx, self.backend, self.repack = model, info, ctx, backend, repack
        self.rpc = list(rpc or [])
        self.kv_budget = kv_budget
        self.budget: Budget | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="start-form"):
            yield Label(f"Start [b]{self.model}[/b]", classes="question")
            with Horizontal(classes="field"):
                yield Label("context (tokens)", classes="label")
                yield Input(str(self.ctx), id="ctx", type="integer")
            with Horizontal(classes="field"):
                yield Label("KV backend", classes="label")
                with RadioSet(id="backend"):
                    yield RadioButton("ssd (file-backed)", value=self.backend == "ssd", id="ssd")
                    yield RadioButton("ram (stock)", value=self.backend == "ram", id="ram")
            with Horizontal(classes="field"):
                yield Label("RPC workers", classes="label")
                yield Input(",".join(self.rpc), id="rpc", placeholder="HOST:PORT,... (none)")
                yield Input("", id="ngl", type="integer", placeholder="ngl auto")
            yield Static(id="estimate")
            yield Static("tab next field   enter / ctrl+s start   esc cancel", classes="hint")

    def on_mount(self) -> None:
        if self.info is not None:  # the server's budget rule, read once (a few /proc and cgroup files)
            self.budget = start_budget(self.info, self.ctx, self.repack, self.kv_budget)
        self._estimate()

    def _ctx(self) -> int | None:
        try:
            v = int(self.query_one("#ctx", Input).value)
        except ValueError:
            return None
        return v if v > 0 else None

    def _backend(self) -> str:
        pressed = self.query_one(RadioSet).pressed_button
        return pressed.id if pressed is not None and pressed.id else self.backend

    def _workers(self) -> tuple[list[str], int | None]:
        """The RPC workers and -ngl as typed; DiskLLMError with the line to show."""
        workers = [str(w) for w in parse_endpoints(self.query_one("#rpc", Input).value, "workers")]
        text = self.query_one("#ngl", Input).value.strip()
        ngl = int(text) if text.lstrip("-").isdigit() else None
        if ngl is not None and ngl < 0:
            raise DiskLLMError("-ngl must be >= 0")
        if ngl is not None and not workers:
            raise DiskLLMError("-ngl offloads layers to RPC workers: name them first")
        return workers, ngl

    @on(Input.Changed, "#ctx")
    @on(Input.Changed, "#rpc")
    @on(Input.Changed, "#ngl")
    @on(RadioSet.Changed)
    def _estimate(self) -> None:
        ctx = self._ctx()
        out = self.query_one("#estimate", Static)
        if ctx is None:
            out.update("[red]context must be a positive integer[/]")
            return
        if self.info is None:
            out.update("no GGUF header: no estimate")
            return
        try:
            workers, ngl = self._workers()
        except DiskLLMError as err:
            out.update(f"[red]{err}[/]")
            return
        if workers:  # what each host holds; the workers' share is in their RAM
            split = plan_split(self.info, ctx, workers, ngl)
            out.update("\n".join(f"{label}: {text}" for label, text in split.rows(self._backend())))
            return
        e = estimate_memory(self.info, ctx, repack=self.repack)
        if self._backend() == "ram":
            out.update(f"private RAM ~ {human_bytes(e.ram_private)} (KV) + compute buffers\n"
                       f"weights {weights_text(e)}")
        else:
            private = f"{human_bytes(e.ssd_private)} (repacked weights) + " if e.ssd_private else ""
            paging = streaming_text(estimate_streaming(self.info, ctx, self.budget))
            out.update(f"private RAM ~ {private}compute buffers only\n"
                       f"KV up to {human_bytes(e.kv)} on SSD (grows with use)\nweights {weights_text(e)}\n"
                       f"budget {budget_text(self.budget)}\nfull context: {paging}")

    @on(Input.Submitted)
    def action_submit(self) -> None:
        ctx = self._ctx()
        if ctx is None:
            self.notify("context must be a positive integer", severity="error")
            return
        try:
            workers, ngl = self._workers()
        except DiskLLMError as err:
            self.notify(str(err), severity="error")
            return
        self.dismiss((ctx, self._backend(), workers, ngl))


class ServerDiedScreen(Dialog):
    """A dead (or failed) server: its last log lines and an offer to restart."""

    BINDINGS = [
        Binding("r", "restart", "Restart", id="dialog.restart"),
        Binding("escape,enter", "dismiss_none", "Dismiss", id="dialog.dismiss"),
    ]

    def __init__(self, model: str, exit_code: int | None, lines: list[str], failed_start: bool = False) -> None:
        super().__init__()
        self.model, self.exit_code, self.lines, self.failed_start = model, exit_code, lines, failed_start

    def compose(self) -> ComposeResult:
        if self.failed_start:
            head = f"[b red]Could not start {self.model}[/]"
        else:
            code = "unknown" if self.exit_code is None else self.exit_code
            head = f"[b red]The server of {self.model} died[/] (exit code {code})"
        with Vertical(classes="dialog", id="died"):
            yield Static(head, classes="question")
            yield Static("\n".join(self.lines[-8:]) or "(no log output)", id="last-lines", markup=False)
            yield Static("[b]r[/b] restart   esc dismiss (F5 shows the whole log)", classes="hint")

    def action_restart(self) -> None:
        self.dismiss(True)
