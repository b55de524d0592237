"""The terminal chat loop, once: `run`, `chat` and their --session variants differ only in Turns."""
from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any, Protocol

from diskllm.core.chat import ChatDelta, ChatDone, context_full, stream_chat
from diskllm.core.server import ServerEntry
from diskllm.core.sessions import Session, SessionRunner, TurnDone

from diskllm.cli.output import say

QUIT = ("/bye", "/exit", "/quit")
Params = dict[str, float | int]


async def _echo(events: AsyncIterator[Any], keep: list[str] | None = None) -> Any:
    """Print a reply as it streams (kept in `keep` too); return the final event."""
    done = None
    async for ev in events:
        if isinstance(ev, ChatDelta):
            if keep is not None:
                keep.append(ev.text)
            sys.stdout.write(ev.text)
            sys.stdout.flush()
        else:
            done = ev
    return done


class Turns(Protocol):
    """What one kind of chat does with a line; the loop does the rest."""
    banner: str

    async def send(self, text: str) -> Any: ...
    def interrupted(self) -> None: ...
    def report(self, done: Any, interactive: bool) -> None: ...


def chat_loop(turns: Turns) -> None:
    """/bye or Ctrl-D ends it, Ctrl-C stops a reply. Each turn gets its own event loop:
    the server is a plain process that outlives them."""
    print(turns.banner, flush=True)
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            print()
            return
        text = line.strip()
        if text in QUIT:
            return
        if not text:
            continue
        try:
            done = asyncio.run(turns.send(line))
        except KeyboardInterrupt:
            turns.interrupted()
            continue
        print(flush=True)
        turns.report(done, interactive)


class PlainTurns:
    """A chat kept in memory: the transcript goes with each request."""

    def __init__(self, entry: ServerEntry, params: Params | None = None) -> None:
        self.entry = entry
        self.params = params or {}
        self.messages: list[dict[str, str]] = []
        self.reply: list[str] = []
        self.banner = f"chatting with {entry.model}; /bye or Ctrl-D to quit, Ctrl-C stops a reply"

    async def send(self, text: str) -> ChatDone | None:
        self.messages.append({"role": "user", "content": text})
        self.reply = []
        return await _echo(stream_chat(self.entry.base_url, self.messages, api_key=self.entry.api_key, **self.params), self.reply)

    def interrupted(self) -> None:
        print("\n[interrupted]", flush=True)
        print(flush=True)
        self._keep_reply()  # what came so far stays in the conversation

    def report(self, done: ChatDone | None, interactive: bool) -> None:
        if done and done.timings and interactive:
            t = done.timings
            print(f"[{t.get('predicted_n', '?')} tokens, {t.get('predicted_per_second', 0):.1f} tok/s]",
                  file=sys.stderr)
        self._keep_reply()

    def _keep_reply(self) -> None:
        self.messages.append({"role": "assistant", "content": "".join(self.reply)})


class SessionTurns:
    """A chat in a saved session: the runner autosaves after each reply."""

    def __init__(self, entry: ServerEntry, runner: SessionRunner, session: Session,
                 params: Params | None = None) -> None:
        self.runner, self.session = runner, session
        self.params = params or {}
        self.banner = (f"chatting with {entry.model} in session {session.name}; "
                       "/bye or Ctrl-D to quit, Ctrl-C stops a reply")

    async def send(self, text: str) -> TurnDone | None:
        return await _echo(self.runner.chat_turn(self.session, text, **self.params))

    def interrupted(self) -> None:
        print("\n[interrupted; the turn is not saved]", flush=True)

    def report(self, done: TurnDone | None, interactive: bool) -> None:
        if done is None:
            return
        name = self.session.name
        if done.reuse is not None:
            say(f"[session {name}: {done.reuse.describe()}]")
        if done.context_full:
            say(f"warning: {context_full(done.context_full, self.runner.model_info.ctx)} (the reply was cut)")
        if done.save_error:
            say(f"warning: autosave failed: {done.save_error}")
        elif interactive and done.timings:
            t = done.timings
            say(f"[{t.get('predicted_n', '?')} tokens, {t.get('predicted_per_second', 0):.1f} tok/s, "
                f"{t.get('cache_n', 0)} cached; saved {done.save.tokens if done.save else 0} tokens]")
