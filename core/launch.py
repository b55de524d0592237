"""One launch path for every front end: resolve -> pull -> build -> start -> session restore.

The CLI's `run`/`chat`, the workbench's start worker and `diskllm serve` call
`launch` and render its events; none of them orchestrates the steps itself.
Chatting, saving and stopping stay with the caller, which owns the lifetime."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diskllm.core.build import ensure_server
from diskllm.core.config import load_config
from diskllm.core.kv_space import check_kv_space
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.models.resolve import PullHook, resolve_model
from diskllm.core.paths import Home
from diskllm.core.rpc.endpoints import parse_endpoints
from diskllm.core.rpc.probe import WorkerInfo, probe
from diskllm.core.rpc.split import Split, plan_split
from diskllm.core.server import RunningServer, ServerEntry, ServerOptions, build_argv, start_server, stop_server
from diskllm.core.sessions import ModelInfo, RestoreReport, Session, SessionRunner, SessionStore, validate_name
from diskllm.core.sessions.server_args import session_server_args


@dataclass
class LaunchRequest:
    model: str                                   # MODEL|PATH as the user gave it
    name: str | None = None                      # display name (default: the resolved one)
    options: dict[str, Any] = field(default_factory=dict)  # ServerOptions fields; None = config
    extra_args: list[str] = field(default_factory=list)     # passed to llama-server as given
    session: str | None = None                   # open (restore or create) this session after start
    sessions: bool = False                       # the server will take sessions (implied by `session`)
    dry_run: bool = False                        # stop after the build: report the command line


# --- events ---------------------------------------------------------------------

@dataclass
class LaunchStep:
    """A line from resolution, the build or the server start."""
    line: str


@dataclass
class WorkersReady:
    """Every --rpc worker answered the handshake; `split` is what each host will hold."""
    workers: list[WorkerInfo]
    split: Split


@dataclass
class ServerReady:
    server: RunningServer


@dataclass
class SessionOpened:
    runner: SessionRunner
    session: Session
    report: RestoreReport | None                 # None: a new session


LaunchEvent = LaunchStep | WorkersReady | ServerReady | SessionOpened
OnEvent = Callable[[LaunchEvent], object]


@dataclass
class Launched:
    options: ServerOptions
    binary: Path
    argv: list[str]
    server: RunningServer | None = None          # None after a dry run
    opened: SessionOpened | None = None


async def open_session(entry: ServerEntry | RunningServer, home: Home, name: str) -> SessionOpened:
    """Restore (or create) session `name` in slot 0 of a running server."""
    runner = SessionRunner(entry.base_url, SessionStore(home), ModelInfo.from_entry(entry, home),
                           api_key=(entry.entry if isinstance(entry, RunningServer) else entry).api_key)
    session, report = await runner.open(name)
    return SessionOpened(runner, session, report)


async def launch(home: Home, req: LaunchRequest, on_event: OnEvent = lambda ev: None, *,
                 on_pull: PullHook | None = None) -> Launched:
    """Start a server for req.model; on_pull pulls a registry name that is not installed."""
    home.ensure()
    cfg = load_config(home)
    if req.session:
        validate_name(req.session)
    model = await resolve_model(home, req.model, on_pull=on_pull)
    info = read_gguf_info(model.path)  # a clear error now beats a cryptic server crash later
    opts = ServerOptions.from_config(cfg, model.path, name=req.name or model.name, **req.options)
    opts.extra_args = list(req.extra_args)
    if opts.kv_backend == "ssd" and not req.dry_run and not opts.rpc:  # a split: checked once it is known
        check_kv_space(home.kv_cache, info, opts.ctx, opts.extra_args)
    if req.sessions or req.session:
        opts.extra_args += session_server_args(model.path, opts.extra_args)

    def say(line: str) -> None:
        on_event(LaunchStep(line))

    binary = await ensure_server(home, progress=say)
    if opts.rpc and not req.dry_run:
        # llama-server aborts on a worker it cannot reach and hangs on a busy one: ask first
        endpoints = parse_endpoints(opts.rpc)
        workers = list(await asyncio.gather(*(asyncio.to_thread(probe, ep) for ep in endpoints)))
        opts.rpc_weights = [w.free for w in workers]
        split = plan_split(info, opts.ctx, [str(e) for e in endpoints], opts.ngl, opts.rpc_weights)
        if opts.kv_backend == "ssd":  # only the main host's layers keep their KV in its file
            check_kv_space(home.kv_cache, info, opts.ctx, opts.extra_args, range(*split.main.layers))
        on_event(WorkersReady(workers, split))
    if req.dry_run:
        return Launched(opts, binary, build_argv(home, opts, binary))
    server = await start_server(home, opts, binary, progress=say)
    done = Launched(opts, binary, server.entry.argv, server)
    on_event(ServerReady(server))
    if req.session:
        try:
            done.opened = await open_session(server, home, req.session)
        except BaseException:
            await stop_server(server)
            raise
        on_event(done.opened)
    return done
