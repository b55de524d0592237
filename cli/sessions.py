"""CLI verbs for sessions: `sessions [rm|rename|export]`, and the --session hooks of run/chat."""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from diskllm.core.chat import ChatDelta
from diskllm.core.errors import DiskLLMError
from diskllm.core.paths import Home
from diskllm.core.sessions import (
    ModelInfo, RestoreReport, Session, SessionRunner, SessionStore, TurnDone, validate_name,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sessions", help="list saved sessions; rm, rename or export one")
    ss = p.add_subparsers(dest="sessions_cmd", metavar="ACTION")
    q = ss.add_parser("rm", help="delete sessions")
    q.add_argument("names", nargs="+", metavar="NAME")
    q.set_defaults(func=cmd_rm)
    q = ss.add_parser("rename", help="rename a session")
    q.add_argument("old", metavar="NAME")
    q.add_argument("new", metavar="NEW")
    q.set_defaults(func=cmd_rename)
    q = ss.add_parser("export", help="write the transcript as Markdown")
    q.add_argument("name", metavar="NAME")
    q.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout)")
    q.set_defaults(func=cmd_export)
    p.set_defaults(func=cmd_list)


def _store() -> SessionStore:
    return SessionStore(Home.from_env())


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def cmd_list(args: argparse.Namespace) -> int:  # noqa: ARG001
    rows = [("NAME", "MODEL", "TOKENS", "SIZE", "UPDATED")]
    for s in _store().list():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.updated))
        model = s.model if not s.error else "? (damaged: see 'sessions export')"
        rows.append((s.name, model, str(s.tokens), _human_bytes(s.size_bytes), when))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    store = _store()
    for n in args.names:
        store.delete(n)
        print(f"deleted session {n}")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    _store().rename(args.old, args.new)
    print(f"renamed session {args.old} -> {args.new}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    md = _store().export_markdown(args.name)
    if args.output:
        from diskllm.core.atomic import atomic_write_text
        atomic_write_text(Path(args.output), md)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(md)
    return 0


# --- hooks for `run --session` / `chat --session` (called from cli_server) ------------

def add_session_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", metavar="NAME",
                   help="resume/save this session (restore at start, autosave after each reply and on stop)")


def session_server_args(args: argparse.Namespace, model_path: Path) -> list[str]:
    """Extra llama-server flags a session needs: --swa-full for SWA/iSWA models.

    Without it this llama.cpp pin never reuses a restored SWA state (docs/sessions.md)."""
    if not getattr(args, "session", None):
        return []
    validate_name(args.session)
    if "--swa-full" in args.server_arg:
        return []
    try:
        from diskllm.core.models.gguf import read_gguf_info
        return ["--swa-full"] if read_gguf_info(model_path).is_swa else []
    except DiskLLMError:
        return []


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def describe_restore(rep: RestoreReport | None, session: Session) -> str:
    if rep is None:
        return f"session {session.name}: new (model {session.meta.model})"
    head = f"session {session.name}: {len(session.messages)} messages"
    if rep.note and rep.fallback:
        return f"{head}; {rep.note}; re-prefilled from the transcript"
    line = f"{head}, restored {rep.restored_tokens} tokens in {rep.wall_ms:.0f} ms"
    if rep.reuse is not None:
        line += f"; {rep.reuse.describe()}"
    if rep.note:
        line += f" ({rep.note})"
    return line


async def _open(entry, home: Home, name: str) -> tuple[SessionRunner, Session]:
    store = SessionStore(home)
    runner = SessionRunner(entry.base_url, store, ModelInfo.from_entry(entry, home))
    session, rep = await runner.open(name)
    _say(describe_restore(rep, session))
    return runner, session


def session_repl(entry, home: Home, name: str, params: dict[str, float | int] | None = None) -> None:
    """Chat in a session: restore, autosave after each reply, save again on the way out."""
    runner, session = asyncio.run(_open(entry, home, name))
    interactive = sys.stdin.isatty()
    for m in session.messages[-4:] if interactive else []:
        _say(f"[{m['role']}] {m['content'][:200]}")
    print(f"chatting with {entry.model} in session {name}; /bye or Ctrl-D to quit, Ctrl-C stops a reply",
          flush=True)
    try:
        while True:
            try:
                line = input(">>> " if interactive else "")
            except EOFError:
                print()
                break
            text = line.strip()
            if text in ("/bye", "/exit", "/quit"):
                break
            if not text:
                continue
            try:
                done = asyncio.run(_turn(runner, session, line, params or {}))
            except KeyboardInterrupt:
                print("\n[interrupted; the turn is not saved]", flush=True)
                continue
            print(flush=True)
            if done is not None:
                if done.reuse is not None:
                    _say(f"[session {name}: {done.reuse.describe()}]")
                if done.save_error:
                    _say(f"warning: autosave failed: {done.save_error}")
                elif interactive and done.timings:
                    t = done.timings
                    _say(f"[{t.get('predicted_n', '?')} tokens, {t.get('predicted_per_second', 0):.1f} tok/s, "
                         f"{t.get('cache_n', 0)} cached; saved {done.save.tokens if done.save else 0} tokens]")
    finally:
        _final_save(runner, session)


async def _turn(runner: SessionRunner, session: Session, text: str,
                params: dict[str, float | int]) -> TurnDone | None:
    done = None
    async for ev in runner.chat_turn(session, text, **params):
        if isinstance(ev, ChatDelta):
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        else:
            done = ev
    return done


def _final_save(runner: SessionRunner, session: Session) -> None:
    try:
        rep = asyncio.run(runner.save(session))
        _say(f"session {session.name} saved ({rep.tokens} tokens, {_human_bytes(rep.bytes)})")
    except DiskLLMError as e:
        _say(f"warning: session {session.name} not saved on exit: {e}")


def headless_session_start(entry, home: Home, name: str) -> tuple[SessionRunner, Session]:
    """`run --headless --session`: restore into slot 0 now; headless_session_stop saves it."""
    return asyncio.run(_open(entry, home, name))


def headless_session_stop(state: tuple[SessionRunner, Session] | None) -> None:
    if state is not None:
        _final_save(*state)
