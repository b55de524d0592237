"""The DiskLLM workbench: a Textual App over diskllm.core.

Structure (see docs/tui.md):
- one Screen per pane (App.MODES), each with its .tcss beside it;
- workers (`@work`, grouped, exclusive where one at a time makes sense) call
  core's async APIs and post tui.messages events to the App;
- the App keeps the state (active server, memory history, pulls, log) and
  forwards each event to the pane screens that exist (fan_out).
"""
from __future__ import annotations

import asyncio
import signal
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen

from diskllm.core.config import Config, load_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import GGUFInfo
from diskllm.core.paths import Home
from diskllm.core.pull.events import CancelToken, PullEvent
from diskllm.core.server import RunningServer, ServerEntry, stop_server

from . import messages as m
from . import services
from .screens.chat import ChatScreen
from .screens.dialogs import ServerDiedScreen
from .screens.log import LogScreen
from .screens.memory import MemoryScreen
from .screens.models import ModelsScreen
from .screens.sessions import SessionsScreen
from .state import Status

HISTORY = 600  # memory samples kept (10 minutes at 1 s)


@dataclass
class PullState:
    spec: str
    token: CancelToken
    event: PullEvent | None = None


class Workbench(App[int]):
    TITLE = "DiskLLM"
    CSS_PATH = "app.tcss"
    MODES = {
        "models": ModelsScreen, "chat": ChatScreen, "sessions": SessionsScreen,
        "memory": MemoryScreen, "log": LogScreen,
    }
    DEFAULT_MODE = "models"
    BINDINGS = [
        Binding("f1", "pane('models')", "Models", show=False, id="pane.models"),
        Binding("f2", "pane('chat')", "Chat", show=False, id="pane.chat"),
        Binding("f3", "pane('sessions')", "Sessions", show=False, id="pane.sessions"),
        Binding("f4", "pane('memory')", "Memory", show=False, id="pane.memory"),
        Binding("f5", "pane('log')", "Log", show=False, id="pane.log"),
        Binding("tab", "next_pane", "Next pane", show=False, id="pane.next"),
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="app.interrupt"),
    ]

    status: reactive[Status] = reactive(Status, always_update=True)

    def __init__(self, home: Home | None = None, *, live: bool = True) -> None:
        """live=False: no discovery, pollers or scans (tests feed events instead)."""
        super().__init__()
        self.home = home or Home.from_env()
        self.live = live
        try:
            self.cfg = load_config(self.home)
            self.config_error: str | None = None
        except DiskLLMError as e:
            self.cfg, self.config_error = Config(), str(e)
        self.panes: dict[str, Screen] = {}
        # state
        self.server: ServerEntry | None = None
        self.server_info: GGUFInfo | None = None
        self.processes: dict[int, RunningServer] = {}  # servers started here, by pid
        # name, path, ctx, backend, rpc workers, ngl
        self.last_start: tuple[str, str, int, str, list[str] | None, int | None] | None = None
        self.models: m.ModelsLoaded | None = None
        self.pulls: dict[str, PullState] = {}
        self.memory: deque[m.MemorySample] = deque(maxlen=HISTORY)
        self.log_lines: deque[str] = deque(maxlen=5000)
        self.sessions: m.SessionsLoaded | None = None
        self.session_runner = None                  # core.sessions.SessionRunner of the server
        self._runner_pid: int | None = None
        self.active_session = None                  # core.sessions.Session
        self._quitting = False
        # Extra request fields for chat replies (tests cap max_tokens; config could too).
        self.chat_params: dict[str, object] = {}

    # --- lifecycle ------------------------------------------------------------
    def on_mount(self) -> None:
        keymap = self.cfg.extra.get("keymap")
        if isinstance(keymap, dict):
            self.set_keymap({str(k): str(v) for k, v in keymap.items()})
        if self.config_error:
            self.notify(self.config_error, title="config.toml", severity="error", timeout=10)
        if self.live:
            self._install_signal_handlers()
            self.refresh_models()
            self.adopt_running()
            self.refresh_sessions()

    def _install_signal_handlers(self) -> None:
        # The terminal going away (SSH drop) sends SIGHUP: stop our servers and exit.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._hangup)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def _hangup(self) -> None:
        """Terminal gone (SIGHUP) or SIGTERM: no awaiting on a dead terminal; SIGTERM
        our servers (they exit on their own; the registry prunes them) and leave."""
        if self._quitting:
            return
        self._quitting = True
        for server in self.processes.values():
            if server.process is not None and server.process.poll() is None:
                server.process.terminate()
        self.exit(0)

    async def action_quit(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        for group in ("watch", "log", "chat"):
            self.cancel_workers(group)
        # Servers started in this workbench stop with it; adopted ones keep running.
        mine = [srv for srv in self.processes.values() if srv.process is None or srv.process.poll() is None]
        if mine:
            self.status = replace(self.status, health="stopping")
        for server in mine:
            try:
                await stop_server(server, grace=5.0)
            except DiskLLMError:
                pass
        self.exit(0)

    def cancel_workers(self, group: str) -> None:
        """Cancel a worker group whichever node (App or a pane) runs it."""
        for worker in list(self.workers):
            if worker.group == group:
                worker.cancel()

    # --- panes ----------------------------------------------------------------
    def action_pane(self, name: str) -> None:
        if self.current_mode != name:
            self.switch_mode(name)

    def action_next_pane(self) -> None:
        names = list(self.MODES)
        self.switch_mode(names[(names.index(self.current_mode) + 1) % len(names)])

    def fan_out(self, message: m.Event) -> None:
        for pane in list(self.panes.values()):
            pane.post_message(message)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name, label in (("models", "Models"), ("chat", "Chat"), ("sessions", "Sessions"),
                            ("memory", "Memory monitor"), ("log", "Server log")):
            yield SystemCommand(f"Pane: {label}", f"Show the {label} pane",
                                lambda n=name: self.action_pane(n))
        yield SystemCommand("Start a server", "Start the selected model (Models pane)",
                            lambda: self._on_models("start"))
        yield SystemCommand("Stop the server", "Stop the active llama-server", self.action_stop_server)
        yield SystemCommand("Pull a model", "Download a model by name", lambda: self._on_models("pull_prompt"))
        yield SystemCommand("Copy last reply", "Copy the last chat reply to the clipboard (OSC 52)",
                            self.copy_last_reply)
        yield SystemCommand("Restart the server", "Start the last model again", self.restart_server)

    def _on_models(self, action: str) -> None:
        self.action_pane("models")
        self.call_after_refresh(lambda: self.screen.run_action(action))

    def copy_last_reply(self) -> None:
        chat = self.panes.get("chat")
        if chat is not None:
            chat.action_copy_reply()  # type: ignore[attr-defined]
        else:
            self.notify("no reply yet", severity="warning")

    # --- models and pulls -----------------------------------------------------
    @work(exclusive=True, group="models", exit_on_error=False)
    async def refresh_models(self) -> None:
        try:
            loaded = await asyncio.to_thread(services.scan_models, self.home)
        except DiskLLMError as e:
            self.notify(str(e), severity="error")
            return
        self.post_message(loaded)

    def start_pull(self, spec: str) -> None:
        spec = spec.strip()
        if not spec:
            return
        if spec in self.pulls:
            self.notify(f"{spec} is already being pulled", severity="warning")
            return
        state = PullState(spec, CancelToken())
        self.pulls[spec] = state
        self.fan_out(m.PullProgress(spec, PullEvent(spec, "manifest", message="starting")))
        self._pull(spec, state.token)

    @work(group="pull", exit_on_error=False)
    async def _pull(self, spec: str, token: CancelToken) -> None:
        await services.run_pull(self.home, spec, token, self.post_message)

    def cancel_pull(self, spec: str) -> None:
        state = self.pulls.get(spec)
        if state:
            state.token.cancel()

    def on_pull_progress(self, msg: m.PullProgress) -> None:
        state = self.pulls.get(msg.spec)
        if state is None:  # injected by a test or a pull started elsewhere
            state = self.pulls[msg.spec] = PullState(msg.spec, CancelToken())
        state.event = msg.event
        self.fan_out(msg)

    def on_pull_done(self, msg: m.PullDone) -> None:
        self.pulls.pop(msg.spec, None)
        if msg.error:
            self.notify(msg.error, title=f"pull {msg.spec} failed", severity="error", timeout=10)
        elif msg.cancelled:
            self.notify(f"pull of {msg.spec} cancelled; the partial file is kept for resume")
        else:
            self.notify(f"pulled {msg.name}")
        self.fan_out(msg)
        if self.live:
            self.refresh_models()

    def on_models_loaded(self, msg: m.ModelsLoaded) -> None:
        self.models = msg
        self.fan_out(msg)

    @work(group="models-rm", exit_on_error=False)
    async def delete_model(self, name: str) -> None:
        try:
            await asyncio.to_thread(services.delete_model, self.home, name)
        except DiskLLMError as e:
            self.notify(str(e), severity="error")
            return
        self.notify(f"deleted {name}")
        self.refresh_models()

    # --- servers --------------------------------------------------------------
    @work(exclusive=True, group="adopt", exit_on_error=False)
    async def adopt_running(self) -> None:
        entry = await asyncio.to_thread(services.adopt_server, self.home)
        if entry is not None and self.server is None:
            info = await asyncio.to_thread(services._info, entry.model_path)
            self.post_message(m.ServerStarted(entry, info, started_here=False))

    def start_model(self, name: str, path: str, ctx: int, backend: str, rpc: list[str] | None = None,
                    ngl: int | None = None) -> None:
        self.last_start = (name, path, ctx, backend, rpc, ngl)
        self.status = Status("starting", name, None, backend, ctx, None, "building/starting llama-server")
        self._start(name, path, ctx, backend, rpc, ngl)

    def restart_server(self) -> None:
        if self.last_start is None:
            self.notify("nothing to restart; start a model from the Models pane", severity="warning")
            return
        self.start_model(*self.last_start)

    @work(exclusive=True, group="server", exit_on_error=False)
    async def _start(self, name: str, path: str, ctx: int, backend: str, rpc: list[str] | None = None,
                     ngl: int | None = None) -> None:
        try:
            # rpc None = config's workers; [] = this host only (the form's choice)
            server = await services.start_model(self.home, name, path,
                                                {"ctx": ctx, "kv_backend": backend, "rpc": rpc, "ngl": ngl},
                                                self.post_message)
        except DiskLLMError as e:
            self.post_message(m.ServerStartFailed(name, str(e)))
            return
        except Exception as e:  # never a traceback in the UI
            self.post_message(m.ServerStartFailed(name, f"{type(e).__name__}: {e}"))
            return
        self.processes[server.pid] = server
        info = await asyncio.to_thread(services._info, path)
        self.post_message(m.ServerStarted(server.entry, info, started_here=True))

    def on_server_progress(self, msg: m.ServerProgress) -> None:
        if self.status.health == "starting":
            self.status = replace(self.status, note=msg.line[:80])
        self.log_lines.append(msg.line)
        self.fan_out(m.LogLines([msg.line]))

    def on_server_started(self, msg: m.ServerStarted) -> None:
        e = msg.entry
        self.server, self.server_info = e, msg.info
        if self.last_start is None:
            self.last_start = (e.model, e.model_path, e.ctx, e.kv_backend, list(e.rpc), e.ngl if e.rpc else None)
        self.memory.clear()
        self.session_runner, self.active_session = None, None  # a new server has an empty slot
        self.status = Status("healthy", e.model, e.port, e.kv_backend, e.ctx, e.pid)
        if self.live:
            self._watch(e)
            self._follow_log(Path(e.log))
            self.refresh_models()
        self.fan_out(msg)

    def on_server_start_failed(self, msg: m.ServerStartFailed) -> None:
        self.status = Status("none", note=f"start of {msg.model} failed")
        self.log_lines.append(f"error: {msg.error}")
        self.fan_out(m.LogLines([f"error: {msg.error}"]))
        self.push_screen(ServerDiedScreen(msg.model, None, [msg.error], failed_start=True),
                         self._maybe_restart)

    @work(exclusive=True, group="watch", exit_on_error=False)
    async def _watch(self, entry: ServerEntry) -> None:
        started = self.processes.get(entry.pid)
        await services.watch_server(self.home, entry, started.process if started else None, self.post_message)

    @work(exclusive=True, group="log", exit_on_error=False)
    async def _follow_log(self, path: Path) -> None:
        await services.tail_log(path, self.post_message)

    def on_server_health(self, msg: m.ServerHealth) -> None:
        if self.server is None or msg.pid != self.server.pid or self.status.health in ("dead", "stopping"):
            return
        health = {"ok": "healthy", "loading": "loading"}.get(msg.status, "error")
        if health != self.status.health:
            self.status = replace(self.status, health=health)

    def on_server_died(self, msg: m.ServerDied) -> None:
        code = "unknown" if msg.exit_code is None else str(msg.exit_code)
        self.status = replace(self.status, health="dead", note=f"exit code {code}")
        self.fan_out(msg)
        if not self._quitting:
            self.push_screen(ServerDiedScreen(msg.entry.model, msg.exit_code, msg.last_lines),
                             self._maybe_restart)

    def _maybe_restart(self, restart: bool | None) -> None:
        if restart:
            self.restart_server()

    def action_stop_server(self) -> None:
        if self.server is None or self.status.health == "dead":
            self.notify("no server is running", severity="warning")
            return
        self._stop(self.server)

    @work(exclusive=True, group="server", exit_on_error=False)
    async def _stop(self, entry: ServerEntry) -> None:
        self.cancel_workers("watch")
        self.status = replace(self.status, health="stopping")
        try:
            await stop_server(self.processes.pop(entry.pid, None) or entry)
        except DiskLLMError as e:
            self.notify(str(e), severity="error")
        self.post_message(m.ServerStopped(entry))

    def on_server_stopped(self, msg: m.ServerStopped) -> None:
        if self.server is not None and self.server.pid == msg.entry.pid:
            self.server = None
            self.status = Status("none", note=f"stopped {msg.entry.model}")
        self.fan_out(msg)
        if self.live:
            self.refresh_models()

    # --- memory, log ----------------------------------------------------------
    def on_memory_sample(self, msg: m.MemorySample) -> None:
        self.memory.append(msg)
        msg.recorded = True
        self.fan_out(msg)

    def on_log_lines(self, msg: m.LogLines) -> None:
        if msg.reset:
            self.log_lines.clear()
        self.log_lines.extend(msg.lines)
        self.fan_out(msg)

    # --- sessions ------------------------------------------------------------
    async def _runner(self):
        """The SessionRunner of the active server (created on first use)."""
        e = self.server
        if e is None or self.status.health in ("dead", "stopping", "none"):
            raise DiskLLMError("no server is running: start a model in the Models pane (F1)")
        if self.session_runner is None or self._runner_pid != e.pid:
            self.session_runner = await services.session_runner(self.home, e)
            self._runner_pid = e.pid
        return self.session_runner

    def _session_error(self, err: BaseException) -> None:
        text = str(err) if isinstance(err, DiskLLMError) else f"{type(err).__name__}: {err}"
        self.post_message(m.SessionFailed(text))

    @work(exclusive=True, group="sessions-list", exit_on_error=False)
    async def refresh_sessions(self) -> None:
        try:
            rows = await asyncio.to_thread(services.session_rows, self.home)
        except Exception as err:  # noqa: BLE001 - shown, never raised
            self.post_message(m.SessionsLoaded([], None, error=str(err)))
            return
        active = self.active_session.name if self.active_session is not None else None
        self.post_message(m.SessionsLoaded(rows, active))

    @work(group="sessions", exit_on_error=False)
    async def switch_session(self, name: str, create: bool = False) -> None:
        """Save the active session's KV, restore `name` into the same slot, verify reuse."""
        try:
            runner = await self._runner()
            session, event = await services.switch_session(runner, self.active_session, name, create=create)
        except Exception as err:  # noqa: BLE001
            self._session_error(err)
            self.refresh_sessions()
            return
        self.active_session = session
        self.post_message(event)
        self.refresh_sessions()

    @work(group="sessions", exit_on_error=False)
    async def rename_session(self, old: str, new: str) -> None:
        try:
            active = self.active_session is not None and self.active_session.name == old
            renamed = await asyncio.to_thread(services.rename_session, self.home, old, new, reload=active)
            if active:
                self.active_session = renamed
        except Exception as err:  # noqa: BLE001
            self._session_error(err)
        self.refresh_sessions()

    @work(group="sessions", exit_on_error=False)
    async def delete_session(self, name: str) -> None:
        try:
            await asyncio.to_thread(services.delete_session, self.home, name)
            if self.active_session is not None and self.active_session.name == name:
                self.active_session = None
            self.notify(f"deleted session {name}")
        except Exception as err:  # noqa: BLE001
            self._session_error(err)
        self.refresh_sessions()

    @work(group="sessions", exit_on_error=False)
    async def export_session(self, name: str, path: str) -> None:
        try:
            dest = await asyncio.to_thread(services.export_session, self.home, name, path)
        except OSError as err:
            self.post_message(m.SessionFailed(f"cannot write {path}: {err.strerror}"))
            return
        except Exception as err:  # noqa: BLE001
            self._session_error(err)
            return
        self.notify(f"exported {name} to {dest}")

    def on_sessions_loaded(self, msg: m.SessionsLoaded) -> None:
        self.sessions = msg
        self.fan_out(msg)

    def on_session_switched(self, msg: m.SessionSwitched) -> None:
        self.fan_out(msg)

    def on_session_failed(self, msg: m.SessionFailed) -> None:
        self.notify(msg.error, title="sessions", severity="error", timeout=8)
        self.fan_out(msg)


def run(home: Home | None = None) -> int:
    app = Workbench(home)
    rc = app.run()
    return int(rc or 0)
