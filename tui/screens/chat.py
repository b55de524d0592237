"""Chat pane: streaming Markdown replies, reasoning collapsed, live tok/s and ctx fill.

The reply streams through Textual's MarkdownStream (Markdown.get_stream), which
appends fragments and batches them when tokens come faster than the screen
redraws, instead of re-rendering the whole document per token."""
from __future__ import annotations

import asyncio

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Collapsible, Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownStream

from diskllm.core.chat import split_think, stream_chat
from diskllm.core.errors import DiskLLMError
from diskllm.core.rpc.failure import explain_or

from .. import messages as m
from .. import services
from .base import PaneScreen


class UserMessage(Static):
    pass


class AssistantMessage(Vertical):
    """Reasoning (collapsed) above the answer; both stream."""

    def __init__(self, answer: str = "", reasoning: str = "") -> None:
        super().__init__()
        self._answer, self._reasoning = answer, reasoning
        self.answer_stream: MarkdownStream | None = None
        self.reasoning_stream: MarkdownStream | None = None
        self.reasoning_chars = len(reasoning)

    def compose(self) -> ComposeResult:
        with Collapsible(title="Thinking", collapsed=True, classes="reasoning"):
            yield Markdown(self._reasoning, classes="reasoning-text")
        yield Markdown(self._answer, classes="answer")

    def on_mount(self) -> None:
        self.query_one(Collapsible).display = bool(self._reasoning)

    async def write(self, text: str, reasoning: bool) -> None:
        if reasoning:
            box = self.query_one(Collapsible)
            box.display = True
            self.reasoning_chars += len(text)
            box.title = f"Thinking ({self.reasoning_chars:,} chars)"
            if self.reasoning_stream is None:
                self.reasoning_stream = Markdown.get_stream(self.query_one(".reasoning-text", Markdown))
            await self.reasoning_stream.write(text)
        else:
            if self.answer_stream is None:
                self.answer_stream = Markdown.get_stream(self.query_one(".answer", Markdown))
            await self.answer_stream.write(text)

    async def finish(self, note: str = "") -> None:
        for stream in (self.reasoning_stream, self.answer_stream):
            if stream is not None:
                await stream.stop()
        self.reasoning_stream = self.answer_stream = None
        if note:
            await self.mount(Static(note, classes="note", markup=False))


class ChatScreen(PaneScreen):
    PANE = "chat"
    CSS_PATH = "chat.tcss"
    BINDINGS = [
        Binding("ctrl+j,alt+enter,ctrl+enter", "send", "Send", key_display="^j", id="chat.send"),
        Binding("escape", "cancel", "Cancel reply", id="chat.cancel"),
        Binding("alt+up", "history(-1)", "Prev", key_display="M-↑", id="chat.history_prev"),
        Binding("alt+down", "history(1)", "Next", key_display="M-↓", show=False, id="chat.history_next"),
        Binding("ctrl+o", "copy_reply", "Copy reply", key_display="^o", id="chat.copy"),
        Binding("ctrl+l", "new_chat", "Clear", key_display="^l", id="chat.clear"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, str]] = []     # the conversation sent to the server
        self.inputs: list[str] = []                 # prompts typed, for alt+up/down
        self.input_pos = 0
        self.current: AssistantMessage | None = None
        self.reply_parts: list[str] = []
        self.last_reply = ""
        self.ctx_used = 0
        self.last_rate: float | None = None

    def compose_pane(self) -> ComposeResult:
        yield VerticalScroll(id="transcript")
        yield Static("", id="chat-stats")
        yield TextArea(id="prompt", soft_wrap=True, show_line_numbers=False, tab_behavior="focus",
                       placeholder="Message (ctrl+j or alt+enter sends, enter = new line)")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#prompt", TextArea).focus()

    def show_state(self) -> None:
        self._stats()

    # --- status line ----------------------------------------------------------
    def _stats(self, rate: float | None = None, streaming: bool = False) -> None:
        e = self.bench.server
        parts = []
        if e is None:
            parts.append("no server: start one in Models (F1)")
        else:
            pct = 100 * self.ctx_used / e.ctx if e.ctx else 0
            parts.append(f"ctx {self.ctx_used:,}/{e.ctx:,} ({pct:.0f}%)")
        if rate is not None:
            parts.append(f"{rate:.1f} tok/s")
        session = self.bench.active_session
        parts.append(f"session {session.name}" if session is not None else "no session")
        if streaming:
            parts.append("esc cancels")
        self.query_one("#chat-stats", Static).update(" · ".join(parts))

    # --- sending ----------------------------------------------------------------
    async def action_send(self) -> None:
        area = self.query_one("#prompt", TextArea)
        text = area.text.strip()
        if not text:
            return
        if self.current is not None:
            self.notify("a reply is still streaming (esc cancels it)", severity="warning")
            return
        e = self.bench.server
        if e is None or self.bench.status.health in ("dead", "stopping", "none"):
            self.notify("no server is running: start a model in the Models pane (F1)", severity="warning")
            return
        area.clear()
        self.inputs.append(text)
        self.input_pos = len(self.inputs)
        self.post_message(m.ChatStarted(text))
        self._reply(text)

    @work(exclusive=True, group="chat", exit_on_error=False)
    async def _reply(self, text: str) -> None:
        e = self.bench.server
        assert e is not None
        session = self.bench.active_session
        params: dict[str, Any] = {"reasoning_format": "none", **self.bench.chat_params}
        try:
            if session is not None and self.bench.session_runner is not None:
                source = self.bench.session_runner.chat_turn(session, text, **params)
                answer, reasoning = await services.consume_chat(source, e.ctx, self.ctx_used, self.post_message)
            else:
                msgs = self.history + [{"role": "user", "content": text}]
                source = stream_chat(e.base_url, msgs, api_key=e.api_key, **params)
                answer, reasoning = await services.consume_chat(source, e.ctx, self.ctx_used, self.post_message)
        except DiskLLMError as err:
            if e.rpc:  # a dropped reply from a server spread over workers: name the one it lost
                err = await asyncio.to_thread(explain_or, e, err)
            self.post_message(m.ChatFinished("".join(self.reply_parts), error=str(err)))
            return
        except Exception as err:  # never a traceback in the UI
            self.post_message(m.ChatFinished("".join(self.reply_parts), error=f"{type(err).__name__}: {err}"))
            return
        self.post_message(m.ChatFinished(answer, reasoning))

    async def on_chat_started(self, msg: m.ChatStarted) -> None:
        self.history.append({"role": "user", "content": msg.prompt})
        self.reply_parts = []
        transcript = self.query_one("#transcript", VerticalScroll)
        self.current = AssistantMessage()
        await transcript.mount_all([UserMessage(msg.prompt, markup=False), self.current])
        transcript.anchor()
        self._stats(streaming=True)

    async def on_chat_delta(self, msg: m.ChatDelta) -> None:
        if self.current is None:
            return
        if not msg.reasoning:
            self.reply_parts.append(msg.text)
        await self.current.write(msg.text, msg.reasoning)

    def on_chat_stats(self, msg: m.ChatStats) -> None:
        self.ctx_used = msg.ctx_used
        self.last_rate = msg.tokens_per_s
        self._stats(msg.tokens_per_s, streaming=not msg.final)

    async def on_chat_finished(self, msg: m.ChatFinished) -> None:
        if self.current is None:  # already finished (Esc raced the last event)
            return
        reply = msg.reply or "".join(self.reply_parts)
        note = ""
        if msg.cancelled:
            note = "[cancelled]"
        elif msg.error:
            note = f"[error: {msg.error}]"
        if self.current is not None:
            await self.current.finish(note)
        self.current = None
        self.history.append({"role": "assistant", "content": reply})
        self.last_reply = reply
        self._stats(self.last_rate)

    def action_cancel(self) -> None:
        if self.current is None:
            return
        for w in self.workers:
            if w.group == "chat" and w.is_running:
                w.cancel()
        self.post_message(m.ChatFinished("".join(self.reply_parts), cancelled=True))

    # --- input history, copy, clear ------------------------------------------------
    def action_history(self, step: int) -> None:
        if not self.inputs:
            return
        self.input_pos = max(0, min(len(self.inputs), self.input_pos + step))
        area = self.query_one("#prompt", TextArea)
        area.text = self.inputs[self.input_pos] if self.input_pos < len(self.inputs) else ""
        area.move_cursor(area.document.end)

    def action_copy_reply(self) -> None:
        if not self.last_reply:
            self.notify("no reply to copy yet", severity="warning")
            return
        self.app.copy_to_clipboard(self.last_reply)
        self.notify(f"copied the last reply ({len(self.last_reply):,} chars)")

    async def action_new_chat(self) -> None:
        if self.current is not None:
            self.action_cancel()
        self.history.clear()
        self.ctx_used = 0
        await self.query_one("#transcript").remove_children()
        self._stats()

    async def show_transcript(self, messages: list[dict[str, Any]]) -> None:
        """Replace the conversation (a session switch)."""
        transcript = self.query_one("#transcript", VerticalScroll)
        await transcript.remove_children()
        self.history = [{"role": str(x["role"]), "content": str(x["content"])} for x in messages]
        widgets = []
        for x in self.history:
            if x["role"] == "user":
                widgets.append(UserMessage(x["content"], markup=False))
            elif x["role"] == "assistant":
                answer, reasoning = split_think(x["content"])
                widgets.append(AssistantMessage(answer, reasoning))
        await transcript.mount_all(widgets)
        transcript.scroll_end(animate=False)
        self.last_reply = next((x["content"] for x in reversed(self.history) if x["role"] == "assistant"), "")

    # --- events from the App --------------------------------------------------------
    async def on_session_switched(self, msg: m.SessionSwitched) -> None:
        self.ctx_used = msg.restored_tokens
        await self.show_transcript(msg.transcript)
        self._stats()

    def on_server_started(self, msg: m.ServerStarted) -> None:
        self._stats()

    def on_server_stopped(self, msg: m.ServerStopped) -> None:
        self._stats()

    def on_server_died(self, msg: m.ServerDied) -> None:
        self._stats()

    @on(TextArea.Changed, "#prompt")
    def _grow(self, event: TextArea.Changed) -> None:
        lines = event.text_area.document.line_count
        event.text_area.styles.height = max(3, min(8, lines + 2))
