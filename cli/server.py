"""CLI verbs for the server: build, run, ps, stop, chat."""
from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
import time
from pathlib import Path

from diskllm.cli import sessions as cli_sessions
from diskllm.core.build import ensure_server
from diskllm.core.chat import ChatDelta, ChatDone, stream_chat
from diskllm.core.config import KV_BACKENDS, Config, load_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.paths import Home
from diskllm.core.server import (
    RunningServer, ServerEntry, ServerOptions, build_argv, list_servers, memory_of,
    start_server, stop_server,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build the pinned llama-server (patched, or --stock)")
    p.add_argument("--stock", action="store_true", help="unpatched baseline for benchmarks")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("run", help="start a server for MODEL and chat with it")
    p.add_argument("model", metavar="MODEL|PATH")
    _server_flags(p)
    p.add_argument("--headless", action="store_true", help="serve only; Ctrl-C stops the server")
    p.add_argument("--dry-run", action="store_true", help="print the llama-server command and exit")
    _sampling_flags(p)
    cli_sessions.add_session_flag(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ps", help="list running servers")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("stop", help="stop the servers of MODEL (or --all)")
    p.add_argument("model", nargs="?", metavar="MODEL|PATH")
    p.add_argument("--all", action="store_true", help="stop every running server")
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
    p.add_argument("--threads", type=int, help="CPU threads (config: threads; default auto)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra llama-server argument (repeatable; use --server-arg=--flag)")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- model resolution -----------------------------------------------------

def resolve_model(home: Home, spec: str, pull_missing: bool = True) -> tuple[Path, str]:
    """MODEL|PATH -> (gguf path, display name); pulls a registry name that is not installed."""
    p = Path(spec).expanduser()
    # `ns/name:tag` and `hf.co/org/repo:Q4_K_M` are model names, not paths.
    looks_like_path = p.exists() or spec.endswith(".gguf") or spec.startswith((".", "/", "~"))
    if looks_like_path:
        if not p.exists():
            raise DiskLLMError(f"{spec}: no such file")
        if p.is_dir():
            raise DiskLLMError(f"{spec} is a directory, not a .gguf file")
        return p.resolve(), p.stem
    from diskllm.cli.models import pull_if_in_registry
    from diskllm.core.models.index import ModelIndex
    try:
        model = ModelIndex(home).get(spec)  # follows registry aliases: smollm2 -> smollm2:135m
    except DiskLLMError:
        # like `ollama run`: pull a known name first
        model = pull_if_in_registry(home, spec) if pull_missing else None
    if model is None:
        raise DiskLLMError(f"unknown model '{spec}' (not a file, not installed; try 'diskllm pull {spec}')")
    return Path(model.path), getattr(model, "name", spec)


def _options(cfg: Config, args: argparse.Namespace, path: Path, name: str) -> ServerOptions:
    for flag in ("ctx", "port", "kv_window", "threads"):
        v = getattr(args, flag)
        if v is not None and v <= 0:
            raise DiskLLMError(f"--{flag.replace('_', '-')} must be a positive integer")
    if args.kv_prefetch is not None and args.kv_prefetch < 0:
        raise DiskLLMError("--kv-prefetch must be >= 0 (MiB; 0 = off)")
    return ServerOptions(
        model_path=path,
        model_name=name,
        ctx=args.ctx or cfg.ctx,
        host=args.host or cfg.host,
        port=args.port or cfg.port,
        port_explicit=args.port is not None,
        kv_backend=args.kv_backend or cfg.kv_backend,
        kv_window=args.kv_window or cfg.kv_window,
        kv_prefetch=cfg.kv_prefetch if args.kv_prefetch is None else args.kv_prefetch,
        threads=args.threads or cfg.threads,
        extra_args=list(args.server_arg),
    )


def _prepare(args: argparse.Namespace) -> tuple[Home, ServerOptions]:
    home = Home.from_env().ensure()
    cfg = load_config(home)
    path, name = resolve_model(home, args.model)
    read_gguf_info(path)  # a clear error now beats a cryptic server crash later
    opts = _options(cfg, args, path, name)
    opts.extra_args += cli_sessions.session_server_args(args, path)
    return home, opts


def _start(home: Home, opts: ServerOptions) -> RunningServer:
    binary = asyncio.run(ensure_server(home, progress=_progress))
    server = asyncio.run(start_server(home, opts, binary, progress=_progress))
    e = server.entry
    print(f"serving {e.model} at {e.base_url} (pid {e.pid}, ctx {e.ctx}, kv {e.kv_backend})", flush=True)
    print(f"OpenAI base_url: {e.openai_base_url}", flush=True)
    return server


def _terminate_on_sigterm() -> None:
    # `kill <diskllm pid>` must stop the server too: unwind through the finally blocks.
    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# --- verbs ----------------------------------------------------------------

def cmd_build(args: argparse.Namespace) -> int:
    home = Home.from_env().ensure()
    path = asyncio.run(ensure_server(home, stock=args.stock, progress=_progress,
                                     force=args.force, use_override=False))
    print(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    home, opts = _prepare(args)
    if args.dry_run:
        binary = asyncio.run(ensure_server(home, progress=_progress))
        print(shlex.join(build_argv(home, opts, binary)))
        return 0
    _terminate_on_sigterm()
    server = _start(home, opts)
    session = None
    try:
        if args.headless:
            if args.session:
                session = cli_sessions.headless_session_start(server.entry, home, args.session)
            print("press Ctrl-C to stop", flush=True)
            entry_file = home.run / f"{server.pid}.json"
            while server.process is None or server.process.poll() is None:
                time.sleep(0.5)
            if not entry_file.exists():  # `diskllm stop` ended it: a normal exit
                print("server stopped", flush=True)
                return 0
            raise DiskLLMError(f"llama-server exited (code {server.process.returncode}); log: {server.entry.log}")
        _chat(server.entry, home, args)
    finally:
        try:
            cli_sessions.headless_session_stop(session)
        finally:
            asyncio.run(stop_server(server))
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
        _chat(running[-1], home, args)
        return 0
    if args.no_start:
        raise DiskLLMError(f"no running server for '{args.model}' (start one: diskllm run {args.model} --headless)")
    home, opts = _prepare(args)
    _terminate_on_sigterm()
    server = _start(home, opts)
    try:
        _chat(server.entry, home, args)
    finally:
        asyncio.run(stop_server(server))
    return 0


def _chat(entry: ServerEntry, home: Home, args: argparse.Namespace) -> None:
    if getattr(args, "session", None):
        cli_sessions.session_repl(entry, home, args.session, sampling_params(args))
    else:
        chat_repl(entry, sampling_params(args))


def chat_repl(entry: ServerEntry, params: dict[str, float | int] | None = None) -> None:
    """Plain terminal chat; /bye or Ctrl-D ends it, Ctrl-C stops a reply."""
    print(f"chatting with {entry.model}; /bye or Ctrl-D to quit, Ctrl-C stops a reply", flush=True)
    messages: list[dict[str, str]] = []
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            print()
            return
        text = line.strip()
        if text in ("/bye", "/exit", "/quit"):
            return
        if not text:
            continue
        messages.append({"role": "user", "content": line})
        reply: list[str] = []
        try:
            done = asyncio.run(_one_turn(entry, messages, reply, params or {}))
        except KeyboardInterrupt:
            print("\n[interrupted]", flush=True)
            done = None
        print(flush=True)
        if done and done.timings and interactive:
            t = done.timings
            print(f"[{t.get('predicted_n', '?')} tokens, {t.get('predicted_per_second', 0):.1f} tok/s]",
                  file=sys.stderr)
        messages.append({"role": "assistant", "content": "".join(reply)})


async def _one_turn(entry: ServerEntry, messages: list[dict[str, str]], reply: list[str],
                    params: dict[str, float | int]) -> ChatDone | None:
    done = None
    async for ev in stream_chat(entry.base_url, messages, **params):
        if isinstance(ev, ChatDelta):
            reply.append(ev.text)
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        else:
            done = ev
    return done


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _human_duration(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def cmd_ps(args: argparse.Namespace) -> int:  # noqa: ARG001
    home = Home.from_env()
    rows = [("MODEL", "PID", "PORT", "CTX", "KV", "UPTIME", "PRIVATE RAM")]
    now = time.time()
    for e in list_servers(home):
        try:
            ram = _human_bytes(memory_of(e.pid).rss_anon)
        except DiskLLMError:
            ram = "-"
        rows.append((e.model, str(e.pid), str(e.port), str(e.ctx), e.kv_backend,
                     _human_duration(now - e.started_at), ram))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    home = Home.from_env()
    servers = list_servers(home)
    if args.all:
        targets = servers
    elif args.model:
        targets = [e for e in servers if _matches(e, home, args.model)]
        if not targets:
            raise DiskLLMError(f"no running server for '{args.model}'")
    elif len(servers) <= 1:
        targets = servers
    else:
        raise DiskLLMError("several servers are running; name a MODEL or use --all")
    if not targets:
        print("no servers running")
        return 0

    async def stop_all() -> None:
        await asyncio.gather(*(stop_server(e) for e in targets))
    asyncio.run(stop_all())
    for e in targets:
        print(f"stopped {e.model} (pid {e.pid}, port {e.port})")
    return 0
