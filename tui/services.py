"""What the workbench's workers do, as plain async functions over diskllm.core.

Each takes `post`, a callable that delivers a tui.messages event to the App
(App.post_message is thread-safe), so the functions can be driven from a test
without a running App. Nothing here touches widgets.
"""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from diskllm.core.chat import ChatDelta as CoreDelta, ChatDone, ThinkSplitter
from diskllm.core.config import load_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.text import printable
from diskllm.core.models.gguf import GGUFInfo, read_gguf_info
from diskllm.core.rpc.failure import explain_lost_server
from diskllm.core.launch import LaunchEvent, LaunchRequest, LaunchStep, launch
from diskllm.core.models.index import ModelIndex
from diskllm.core.models.resolve import remove_model
from diskllm.core.paths import Home
from diskllm.core.pull import pull
from diskllm.core.pull.events import CancelToken, PullCancelled, PullEvent
from diskllm.core.sessions import ModelInfo, Session, SessionRunner, SessionStore
from diskllm.core.models.registry import load_registry
from diskllm.core.server import (
    RunningServer, ServerEntry, kv_disk_bytes, kv_mapping_resident, paging_stats,
    list_servers, log_tail, memory_of, stop_server,
)

from . import messages as m

Post = Callable[[m.Event], object]


def _info(path: str | Path) -> GGUFInfo | None:
    try:
        return read_gguf_info(path)
    except (DiskLLMError, OSError):
        return None


# --- models -----------------------------------------------------------------

def scan_models(home: Home) -> m.ModelsLoaded:
    """Installed models (with their GGUF headers) and registry names not pulled yet."""
    cfg = load_config(home)
    index = ModelIndex(home)
    served = {str(Path(e.model_path).resolve()) for e in list_servers(home)}
    rows = []
    for model in index.all():
        path = model.path
        rows.append(m.ModelRow(
            name=printable(model.name), size=model.size, quant=model.quant, arch=model.arch, path=str(path),
            info=_info(path), served=str(path.resolve()) in served))
    installed = {r.name.lower() for r in rows}
    available = []
    try:
        registry = load_registry(home)
        for e in registry.names():
            if e.name.lower() not in installed:
                available.append(m.RegistryRow(printable(e.name), printable(e.description), ", ".join(s.kind for s in e.sources)))
    except DiskLLMError:
        pass
    return m.ModelsLoaded(rows, available, cfg.ctx, cfg.repack)


async def run_pull(home: Home, spec: str, token: CancelToken, post: Post) -> None:
    def progress(ev: PullEvent) -> None:
        post(m.PullProgress(spec, ev))

    try:
        model = await pull(home, spec, progress=progress, cancel=token)
    except PullCancelled:
        post(m.PullDone(spec, cancelled=True))
    except DiskLLMError as e:
        post(m.PullDone(spec, error=str(e)))
    except asyncio.CancelledError:
        post(m.PullDone(spec, cancelled=True))
        raise
    except Exception as e:  # never a traceback in the UI
        post(m.PullDone(spec, error=f"{type(e).__name__}: {e}"))
    else:
        post(m.PullDone(spec, name=model.name))


def delete_model(home: Home, name: str) -> None:
    remove_model(home, name)


# --- servers ----------------------------------------------------------------

async def start_model(home: Home, name: str, path: str, overrides: dict[str, Any], post: Post) -> RunningServer:
    """core.launch with the workbench's choices; progress lines go out as ServerProgress.

    sessions=True: any server started here may take sessions (the Sessions pane),
    so it gets the flags a session needs (--swa-full for sliding-window models)."""
    def render(ev: LaunchEvent) -> None:
        if isinstance(ev, LaunchStep):
            post(m.ServerProgress(ev.line))

    req = LaunchRequest(model=path, name=name, options=overrides, sessions=True)
    done = await launch(home, req, render)
    assert done.server is not None
    return done.server


def adopt_server(home: Home) -> ServerEntry | None:
    """The newest server already running in this home, if any."""
    servers = list_servers(home)
    return servers[-1] if servers else None


def process_alive(pid: int, process: subprocess.Popen | None) -> tuple[bool, int | None]:
    if process is not None:
        rc = process.poll()  # also reaps our own child
        return rc is None, rc
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, None
    except psutil.Error:
        return False, None


def read_memory(entry: ServerEntry, kv_dir: Path) -> m.MemorySample:
    """One reading from /proc (blocking: call it in a thread)."""
    mem = memory_of(entry.pid)
    return m.MemorySample(
        pid=entry.pid, time=time.time(), rss_anon=mem.rss_anon, rss_file=mem.rss_file,
        kv_resident=kv_mapping_resident(entry.pid, kv_dir), kv_disk=kv_disk_bytes(kv_dir, entry.pid),
        sys_available=psutil.virtual_memory().available, vm_hwm=mem.vm_hwm,
        paging=paging_stats(kv_dir, entry.pid))


async def watch_server(home: Home, entry: ServerEntry, process: subprocess.Popen | None,
                       post: Post, interval: float = 1.0, health_every: int = 2) -> None:
    """Memory and health poller for one server.

    The next reading is scheduled only after the last one finished (no pile-up
    when /proc/PID/smaps is slow), and the reading runs in a thread, not on the
    UI loop. Ends with ServerDied when the process goes away."""
    kv_dir = Home(Path(entry.home)).kv_cache if entry.home else home.kv_cache
    tick = 0
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            alive, rc = process_alive(entry.pid, process)
            if not alive:
                tail = log_tail(Path(entry.log), 8)
                lost = await asyncio.to_thread(explain_lost_server, entry, 0.0) if entry.rpc else None
                post(m.ServerDied(entry, rc, ([str(lost)] if lost else []) + tail))  # the worker it lost first
                return
            try:
                sample = await asyncio.to_thread(read_memory, entry, kv_dir)
            except (DiskLLMError, psutil.Error, OSError):
                sample = None
            if sample is not None:
                post(sample)
            if tick % health_every == 0:
                status = "error"
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(entry.base_url + "/health")
                    status = {200: "ok", 503: "loading"}.get(r.status_code, "error")
                post(m.ServerHealth(entry.pid, status))
            tick += 1
            await asyncio.sleep(interval)


async def tail_log(path: Path, post: Post, interval: float = 0.5, initial: int = 200) -> None:
    """Follow a log file like `tail -f`, starting with its last `initial` lines."""
    pos = 0
    first = True
    partial = ""
    while True:
        try:
            size = path.stat().st_size
            if size < pos:
                pos = 0
            if size > pos:
                with open(path, "rb") as f:
                    if first and size > 256 * 1024:
                        pos = size - 256 * 1024
                    f.seek(pos)
                    data = f.read(size - pos)
                pos = size
                text = partial + data.decode("utf-8", errors="replace")
                lines = text.split("\n")
                partial = lines.pop()
                if first:
                    lines = lines[-initial:]
                if lines:
                    post(m.LogLines([printable(ln) for ln in lines], reset=first))
                    first = False
        except FileNotFoundError:
            pass
        await asyncio.sleep(interval)


# --- chat -------------------------------------------------------------------

async def consume_chat(source: AsyncIterator[Any], ctx_size: int, prompt_tokens_hint: int,
                       post: Post) -> tuple[str, str]:
    """Read a stream of core ChatDelta / ChatDone (stream_chat or SessionRunner.chat_turn),
    post ChatDelta and ChatStats events, return (answer, reasoning).

    Send requests with reasoning_format="none": llama-server then keeps <think>
    in the content, where the splitter finds it. Cancellation (Esc) propagates as
    CancelledError and closes the HTTP stream, which stops the generation."""
    splitter = ThinkSplitter()
    answer: list[str] = []
    reasoning: list[str] = []
    n = 0
    t0 = time.monotonic()
    last_stats = 0.0

    def emit(parts: list[tuple[str, bool]]) -> None:
        for text, is_r in parts:
            (reasoning if is_r else answer).append(text)
            post(m.ChatDelta(text, reasoning=is_r))

    async for ev in source:
        if isinstance(ev, CoreDelta):
            n += 1
            emit(splitter.feed(ev.text))
            now = time.monotonic()
            if now - last_stats >= 0.25:
                last_stats = now
                rate = n / max(now - t0, 1e-6)
                post(m.ChatStats(rate, prompt_tokens_hint + n, ctx_size))
        elif isinstance(ev, ChatDone):
            emit(splitter.flush())
            timings = ev.timings or {}
            usage = ev.usage or {}
            rate = float(timings.get("predicted_per_second") or n / max(time.monotonic() - t0, 1e-6))
            used = int(usage.get("total_tokens") or prompt_tokens_hint + n)
            post(m.ChatStats(rate, used, ctx_size, final=True))
    return "".join(answer), "".join(reasoning)


async def stop(entry: ServerEntry | RunningServer, grace: float = 10.0) -> None:
    await stop_server(entry, grace=grace)


# --- sessions ---------------------------------------------------------------

def session_rows(home: Home) -> list[m.SessionRow]:
    rows = []
    for s in SessionStore(home).list():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.updated)) if s.updated else "-"
        rows.append(m.SessionRow(s.name, printable(s.model) if not s.error else f"damaged: {s.damage}",
                                 s.tokens, s.size_bytes, when))
    return rows


def switched_event(report: Any, session: Any) -> m.SessionSwitched:
    """SwitchReport (core.sessions) + the loaded Session -> SessionSwitched."""
    rest = report.restored
    saved = ""
    if report.saved is not None:
        sv = report.saved
        saved = f"saved {sv.name}: {sv.tokens} tokens in {sv.wall_ms:.0f} ms"
    reuse = rest.reuse.describe() if rest.reuse is not None else ""
    verified = bool(rest.reuse is not None and rest.reuse.reused > 0)
    note = rest.note or ""
    if rest.fallback:
        note = (note + "; " if note else "") + f"fallback: {rest.fallback}"
    return m.SessionSwitched(
        session.name, list(session.messages), rest.restored_tokens, rest.wall_ms, rest.restore_ms,
        report.total_ms, saved, reuse, verified, note)


async def session_runner(home: Home, entry: ServerEntry) -> SessionRunner:
    info = await asyncio.to_thread(ModelInfo.from_entry, entry, home)
    return SessionRunner(entry.base_url, SessionStore(home), info, api_key=entry.api_key)


async def switch_session(runner: SessionRunner, active: Session | None, name: str, *,
                         create: bool = False) -> tuple[Session, m.SessionSwitched]:
    """Save the active session's KV, restore `name` into the same slot, verify reuse."""
    store = runner.store
    if create:
        await asyncio.to_thread(store.create, name, runner.model_info)
    report = await runner.switch(active, name, verify=True)
    session = await asyncio.to_thread(store.load, name)
    return session, switched_event(report, session)


def rename_session(home: Home, old: str, new: str, *, reload: bool = False) -> Session | None:
    """Rename; reload=True (the active session was renamed) returns it under its new name."""
    store = SessionStore(home)
    store.rename(old, new)
    return store.load(new) if reload else None


def delete_session(home: Home, name: str) -> None:
    SessionStore(home).delete(name)


def export_session(home: Home, name: str, path: str) -> Path:
    """Write the transcript as Markdown; OSError (not DiskLLMError) when the file cannot be written."""
    text = SessionStore(home).export_markdown(name)
    dest = Path(path).expanduser()
    dest.write_text(text, "utf-8")
    return dest
