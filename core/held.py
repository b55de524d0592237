"""Which session a detached server holds (`run --headless --session NAME`).

The server's slot holds NAME between CLI calls: `chat --no-start` continues it
(and autosaves after every reply), `diskllm stop` saves it once more before the
server goes. The record is a file beside the server's registry entry, so it
dies with the entry."""
from __future__ import annotations

import contextlib

from diskllm.core.atomic import atomic_write_text
from diskllm.core.paths import Home
from diskllm.core.server import ServerEntry
from diskllm.core.sessions import ModelInfo, SaveReport, SessionRunner, SessionStore


def _file(home: Home, pid: int):
    return home.run / f"{pid}.session"


def hold(home: Home, pid: int, name: str) -> None:
    atomic_write_text(_file(home, pid), name + "\n")


def held_session(home: Home, pid: int) -> str | None:
    with contextlib.suppress(OSError):
        return _file(home, pid).read_text(encoding="utf-8").strip() or None
    return None


def release(home: Home, pid: int) -> None:
    _file(home, pid).unlink(missing_ok=True)


async def save_held(home: Home, entry: ServerEntry) -> tuple[str, SaveReport] | None:
    """Save the slot of the session this server holds (None: it holds none)."""
    name = held_session(home, entry.pid)
    if name is None:
        return None
    store = SessionStore(home)
    runner = SessionRunner(entry.base_url, store, ModelInfo.from_entry(entry, home), api_key=entry.api_key)
    return name, await runner.save(store.load(name))
