"""CLI verbs for the server: build, run, ps, stop, chat. Each parses, calls core, renders."""
from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import time
from pathlib import Path

from diskllm.core.build import ensure_server
from diskllm.core.config import KV_BACKENDS, load_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.held import hold, release, save_held
from diskllm.core.launch import (LaunchEvent, Launched, LaunchRequest, LaunchStep, ServerReady, SessionOpened,
                                 WorkersReady, launch)
from diskllm.core.models.resolve import resolve_model as core_resolve_model
from diskllm.core.paths import Home
from diskllm.core.rpc.endpoints import parse_endpoints
from diskllm.core.rpc.failure import explain_lost_server, explain_or
from diskllm.core.rpc.split import Split
from diskllm.core.rpc.workers import list_workers
from diskllm.core.server import PagingStats, ServerEntry, list_servers, memory_of, paging_stats, stop_server

from diskllm.cli import sessions as cli_sessions
from diskllm.cli.args import require_positive
from diskllm.cli.models import pull_hook
from diskllm.cli.output import duration, human_bytes, say, table
from diskllm.cli.repl import PlainTurns, chat_loop
from diskllm.cli.workers import matching_workers, stop_workers, worker_rows


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build the pinned llama-server (patched, or --stock)")
    p.add_argument("--stock", action="store_true", help="unpatched baseline for benchmarks")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("run", help="start a server for MODEL and chat with it")
    p.add_argument("model", metavar="MODEL|PATH")
    _server_flags(p)
    p.add_argument("--headless", action="store_true",
                   help="serve only: start the server detached, print its URL, pid and log, and return")
    p.add_argument("--foreground", action="store_true",
                   help="with --headless: stay in the foreground until Ctrl-C (service managers, containers)")
    p.add_argument("--dry-run", action="store_true", help="print the llama-server command and exit")
    _sampling_flags(p)
    cli_sessions.add_session_flag(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ps", help="list running servers")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("stop", help="stop the servers of MODEL, a worker HOST:PORT, or --all")
    p.add_argument("model", nargs="?", metavar="MODEL|PATH|HOST:PORT")
    p.add_argument("--all", action="store_true", help="stop every running server and worker")
    p.add_argument("--workers", action="store_true", help="stop every running worker")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("chat", help="chat with MODEL (reuses its running server)")
    p.add_argument("model", metavar="MODEL|PATH")
    p.add_argument("--no-start", action="store_true", help="fail instead of starting a server")
    _server_flags(p)
    _sampling_flags(p)
    cli_sessions.add_session_flag(p)
    p.set_defaults(func=cmd_chat)


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, help="sampling temperature for the chat (server default if unset)")
    p.add_argument("--max-tokens", type=int, help="cap on tokens per reply (default: until the model stops)")


def sampling_params(args: argparse.Namespace) -> dict[str, float | int]:
    """Chat request parameters the user set on the command line."""
    params: dict[str, float | int] = {}
    if getattr(args, "temperature", None) is not None:
        params["temperature"] = args.temperature
    if getattr(args, "max_tokens", None) is not None:
        params["max_tokens"] = args.max_tokens
    return params


def _server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ctx", type=int, help="context size in tokens (config: ctx)")
    p.add_argument("--port", type=int, help="port; busy -> error (config: port, busy -> next free)")
    p.add_argument("--host", help="bind address (config: host)")
    p.add_argument("--kv-backend", choices=KV_BACKENDS, help="KV cache on ssd or in ram (config: kv_backend)")
    p.add_argument("--kv-window", type=int, help="newest tokens of KV kept hot while paging (config: kv_window)")
    p.add_argument("--kv-prefetch", type=int, metavar="MIB",
                   help="MiB of KV read ahead of compute once it no longer fits in RAM; 0 = off (config: kv_prefetch)")
    p.add_argument("--kv-budget", type=int, metavar="MIB",
                   help="MiB of KV + weights kept resident while paging (config: kv_budget; default auto: "
                        "the memory cgroup's limit or MemAvailable, less private memory)")
    p.add_argument("--threads", type=int, help="CPU threads (config: threads; default auto)")
    p.add_argument("--api-key", help="the server requires 'Authorization: Bearer KEY' (config: api_key); "
                                     "chat, sessions and the workbench send it")
    p.add_argument("--rpc", metavar="HOST:PORT[,HOST:PORT...]",
                   help="spread the model over these `diskllm worker`s (config: rpc)")
    p.add_argument("--ngl", type=int, metavar="N",
                   help="with --rpc: layers on the workers, llama.cpp's -ngl (the output head counts as one; "
                        "default: an equal share per host)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra llama-server argument (repeatable; use --server-arg=--flag)")


# --- the launch: parse -> core.launch -> render ------------------------------

def resolve_model(home: Home, spec: str, pull_missing: bool = True) -> tuple[Path, str]:
    """MODEL|PATH -> (gguf path, display name); a registry name not installed is pulled with a bar."""
    hook = pull_hook(home) if pull_missing else None
    model = asyncio.run(core_resolve_model(home, spec, on_pull=hook))
    return model.path, model.name


def _request(args: argparse.Namespace, *, dry_run: bool = False) -> LaunchRequest:
    require_positive(args, "ctx", "port", "kv_window", "threads", "kv_budget")
    if args.port is not None and args.port > 65535:
        raise DiskLLMError(f"--port {args.port} is out of range (1-65535)")
    if args.kv_prefetch is not None and args.kv_prefetch < 0:
        raise DiskLLMError("--kv-prefetch must be >= 0 (MiB; 0 = off)")
    if args.ngl is not None and args.ngl < 0:
        raise DiskLLMError("--ngl must be >= 0")
    options = {k: getattr(args, k) for k in ("ctx", "host", "port", "kv_backend", "kv_window", "kv_prefetch",
                                             "kv_budget", "threads", "ngl")}
    if args.rpc is not None:
        options["rpc"] = [str(e) for e in parse_endpoints(args.rpc)]
    cfg = load_config(Home.from_env())
    key = getattr(args, "api_key", None) or cfg.api_key
    extra = list(args.server_arg) + (["--api-key", key] if key else [])
    if (args.host or cfg.host) not in ("127.0.0.1", "localhost", "::1") and not key:
        say("warning: the server listens beyond loopback without an API key: anyone who can reach it "
            "can use the model (set --api-key or api_key)")
    return LaunchRequest(model=args.model, options=options, extra_args=extra,
                         session=getattr(args, "session", None), dry_run=dry_run)


def _render(ev: LaunchEvent) -> None:
    if isinstance(ev, LaunchStep):
        say(ev.line)
    elif isinstance(ev, WorkersReady):
        for w in ev.workers:
            say(f"worker {w.endpoint}: RPC {'.'.join(map(str, w.version))}, offers "
                f"{human_bytes(w.free, 'binary')} of {human_bytes(w.total, 'binary')}")
        say(split_line(ev.split))
    elif isinstance(ev, ServerReady):
        e = ev.server.entry
        print(f"serving {e.model} at {e.base_url} (pid {e.pid}, ctx {e.ctx}, kv {e.kv_backend})", flush=True)
        print(f"OpenAI base_url: {e.openai_base_url}", flush=True)
    elif isinstance(ev, SessionOpened):
        say(cli_sessions.describe_restore(ev.report, ev.session))


def split_line(split: Split, kv_backend: str = "ssd") -> str:
    """One line: what each host holds (the start of `run --rpc`)."""
    return f"split (-ngl {split.ngl}): " + "; ".join(f"{label} {text}" for label, text in split.rows(kv_backend))


def _launch(args: argparse.Namespace, *, dry_run: bool = False) -> tuple[Home, Launched]:
    home = Home.from_env().ensure()
    req = _request(args, dry_run=dry_run)
    return home, asyncio.run(launch(home, req, _render, on_pull=pull_hook(home)))


def _terminate_on_sigterm() -> None:
    # `kill <diskllm pid>` must stop the server too: unwind through the finally blocks.
    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# --- verbs ----------------------------------------------------------------

def cmd_build(args: argparse.Namespace) -> int:
    home = Home.from_env().ensure()
    path = asyncio.run(ensure_server(home, stock=args.stock, progress=say,
                                     force=args.force, use_override=False))
    print(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        _, done = _launch(args, dry_run=True)
        print(shlex.join(done.argv))
        return 0
    if args.headless and not args.foreground:
        return _run_detached(args)
    _terminate_on_sigterm()
    home, done = _launch(args)
    server = done.server
    assert server is not None
    try:
        if args.headless:
            print("press Ctrl-C to stop", flush=True)
            entry_file = home.run / f"{server.pid}.json"
            while server.process is None or server.process.poll() is None:
                time.sleep(0.5)
            if not entry_file.exists():  # `diskllm stop` ended it: a normal exit
                print("server stopped", flush=True)
                return 0
            lost = explain_lost_server(server.entry)
            if lost:
                raise lost
            raise DiskLLMError(f"llama-server exited (code {server.process.returncode}); log: {server.entry.log}")
        _chat(server.entry, home, args, done.opened)
    finally:
        try:
            if args.headless and done.opened is not None:
                cli_sessions.final_save(done.opened.runner, done.opened.session)
        finally:
            asyncio.run(stop_server(server))
    return 0


def _run_detached(args: argparse.Namespace) -> int:
    """Start the server (its own session and process group, log under logs/) and leave it running.

    The session, if any, is restored (or created) before we return and recorded
    as held by the server: `chat --no-start` continues it, `stop` saves it."""
    home, done = _launch(args)
    server = done.server
    assert server is not None
    if done.opened is not None:
        hold(home, server.pid, done.opened.session.name)
    e = server.entry
    print(f"url: {e.base_url}\npid: {e.pid}\nlog: {e.log}", flush=True)
    print(f"stop it with: diskllm stop {e.model}", flush=True)
    return 0


def _matches(entry: ServerEntry, home: Home, spec: str) -> bool:
    if entry.model == spec:
        return True
    p = Path(spec).expanduser()
    if p.exists() and str(p.resolve()) == entry.model_path:
        return True
    try:
        path, _ = resolve_model(home, spec, pull_missing=False)
    except DiskLLMError:
        return False
    return str(path) == entry.model_path


def cmd_chat(args: argparse.Namespace) -> int:
    home = Home.from_env().ensure()
    running = [e for e in list_servers(home) if _matches(e, home, args.model)]
    if running:
        _chat(running[-1], home, args, None)
        return 0
    if args.no_start:
        raise DiskLLMError(f"no running server for '{args.model}' (start one: diskllm run {args.model} --headless)")
    _terminate_on_sigterm()
    home, done = _launch(args)
    assert done.server is not None
    try:
        _chat(done.server.entry, home, args, done.opened)
    finally:
        asyncio.run(stop_server(done.server))
    return 0


def _chat(entry: ServerEntry, home: Home, args: argparse.Namespace, got: SessionOpened | None) -> None:
    try:
        _chat_turns(entry, home, args, got)
    except DiskLLMError as err:  # a server that lost a worker gets the line naming it
        raise explain_or(entry, err) from None


def _chat_turns(entry: ServerEntry, home: Home, args: argparse.Namespace, got: SessionOpened | None) -> None:
    if getattr(args, "session", None):
        got = got or cli_sessions.opened(entry, home, args.session)
        cli_sessions.session_repl(entry, got, sampling_params(args))
    else:
        chat_loop(PlainTurns(entry, sampling_params(args)))


def paging_text(p: PagingStats | None) -> str:
    """One cell: why a reply is slow and what more RAM would buy."""
    if p is None or not p.active:
        return "-" if p is None else "fits in RAM"
    b = lambda n: human_bytes(n, "binary")  # noqa: E731
    return (f"budget {b(p.budget)} ({p.budget_source}), resident {b(p.resident)} of {b(p.working_set)}, "
            f"streams {b(p.streamed_per_token)}/token at {b(int(p.read_per_second))}/s"
            f"{', by plain page faults (timed faster here)' if p.read_path == 'faults' else ''}"
            f"{', in 2 MiB folios' if p.large_folios and p.read_path != 'faults' else ''}; "
            f"+{b(p.more_ram_helps)} RAM would stop it")


def cmd_ps(args: argparse.Namespace) -> int:  # noqa: ARG001
    home = Home.from_env()
    rows = [("MODEL", "PID", "PORT", "CTX", "KV", "UPTIME", "PRIVATE RAM", "PAGING")]
    now = time.time()
    servers = list_servers(home)
    for e in servers:
        try:
            ram = human_bytes(memory_of(e.pid).rss_anon, "binary")
        except DiskLLMError:
            ram = "-"
        kv = e.kv_backend + (f", -ngl {e.ngl} on {','.join(e.rpc)}" if e.rpc else "")
        rows.append((e.model, str(e.pid), str(e.port), str(e.ctx), kv,
                     duration(now - e.started_at), ram, paging_text(paging_stats(home.kv_cache, e.pid))))
    workers = worker_rows(home)
    if servers or not workers:
        table(rows)
    if workers:
        if servers:
            print()
        table(workers)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    home = Home.from_env()
    servers = list_servers(home)
    workers = []
    if args.all:
        targets, workers = servers, list_workers(home)
    elif args.workers:
        targets, workers = [], list_workers(home)
    elif args.model:
        targets = [e for e in servers if _matches(e, home, args.model)]
        workers = [] if targets else matching_workers(home, args.model)
        if not targets and not workers:
            raise DiskLLMError(f"no running server or worker for '{args.model}'")
    elif len(servers) <= 1:
        targets = servers
        workers = [] if servers else list_workers(home)  # nothing else to stop: the workers
    else:
        raise DiskLLMError("several servers are running; name a MODEL or use --all")
    if not targets and not workers:
        print("no servers running")
        return 0

    async def save_then_stop(e: ServerEntry) -> None:
        try:
            saved = await save_held(home, e)
            if saved:
                say(f"session {saved[0]} saved ({saved[1].tokens} tokens)")
        except DiskLLMError as err:
            say(f"warning: session held by pid {e.pid} not saved: {err}")
        await stop_server(e)
        release(home, e.pid)

    async def stop_all() -> None:
        await asyncio.gather(*(save_then_stop(e) for e in targets))
    asyncio.run(stop_all())  # servers before their workers: a server that loses a worker aborts
    for e in targets:
        print(f"stopped {e.model} (pid {e.pid}, port {e.port})")
    asyncio.run(stop_workers(workers))
    for w in workers:
        print(f"stopped worker {w.address} (pid {w.pid})")
    return 0

