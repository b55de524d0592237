"""CLI verbs for sessions: `sessions [rm|rename|export]`, and the --session side of run/chat."""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from diskllm.core.atomic import atomic_write_text
from diskllm.core.errors import DiskLLMError
from diskllm.core.launch import SessionOpened, open_session
from diskllm.core.paths import Home
from diskllm.core.server import ServerEntry
from diskllm.core.sessions import RestoreReport, Session, SessionRunner, SessionStore

from diskllm.cli.output import human_bytes, say, table
from diskllm.cli.repl import Params, SessionTurns, chat_loop


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
    q.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    q.set_defaults(func=cmd_export)
    p.set_defaults(func=cmd_list)


def _store() -> SessionStore:
    return SessionStore(Home.from_env())


def cmd_list(args: argparse.Namespace) -> int:  # noqa: ARG001
    rows = [("NAME", "MODEL", "TOKENS", "SIZE", "UPDATED")]
    for s in _store().list():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.updated))
        model = s.model if not s.error else f"damaged: {s.damage} ('sessions rm {s.name}' removes it)"
        rows.append((s.name, model, str(s.tokens), human_bytes(s.size_bytes, "binary"), when))
    table(rows)
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
        out = Path(args.output)
        check_export_target(out, args.force)
        atomic_write_text(out, md)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(md)
    return 0


def check_export_target(out: Path, force: bool) -> None:
    """No silent overwrite, no folders created on the way."""
    if out.is_dir():
        raise DiskLLMError(f"{out} is a folder: give a file name (-o {out / 'session.md'})")
    if not out.parent.is_dir():
        raise DiskLLMError(f"folder {out.parent} does not exist: create it first")
    if out.exists() and not force:
        raise DiskLLMError(f"{out} exists: add --force to overwrite it")


# --- `run --session` / `chat --session` (called from cli.server) ------------------

def add_session_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", metavar="NAME",
                   help="resume/save this session (restore at start, autosave after each reply and on stop)")


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


def opened(entry: ServerEntry, home: Home, name: str) -> SessionOpened:
    """Restore (or create) the session on a server that is already running, and say how it went."""
    got = asyncio.run(open_session(entry, home, name))
    say(describe_restore(got.report, got.session))
    return got


def session_repl(entry: ServerEntry, got: SessionOpened, params: Params | None = None) -> None:
    """Chat in a session: autosave after each reply, save again on the way out."""
    interactive = sys.stdin.isatty()
    for m in got.session.messages[-4:] if interactive else []:
        say(f"[{m['role']}] {m['content'][:200]}")
    try:
        chat_loop(SessionTurns(entry, got.runner, got.session, params))
    finally:
        final_save(got.runner, got.session)


def final_save(runner: SessionRunner, session: Session) -> None:
    try:
        rep = asyncio.run(runner.save(session))
        say(f"session {session.name} saved ({rep.tokens} tokens, {human_bytes(rep.bytes, 'binary')})")
    except DiskLLMError as e:
        say(f"warning: session {session.name} not saved on exit: {e}")
