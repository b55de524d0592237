"""Minimal streaming client for llama-server's OpenAI-compatible chat endpoint."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import httpx

from diskllm.core.errors import DiskLLMError
from diskllm.core.server import bearer


CONTEXT_HINT = ("start a new session, or restart the server with a larger --ctx "
                "(or allow context shift: --server-arg=--context-shift)")


class ContextFull(DiskLLMError):
    """The conversation does not fit the server's context."""


def context_full(tokens: int, ctx: int | None = None) -> ContextFull:
    of = f" of {ctx}" if ctx else ""
    return ContextFull(f"context full ({tokens}{of} tokens): {CONTEXT_HINT}")


def server_error(status: int | None, text: str) -> DiskLLMError:
    """llama-server's JSON error -> one line (a context overflow gets the context-full line)."""
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    err = doc.get("error", doc) if isinstance(doc, dict) else None
    if isinstance(err, dict):
        if err.get("type") == "exceed_context_size_error":
            return context_full(int(err.get("n_prompt_tokens") or 0), int(err.get("n_ctx") or 0) or None)
        text = str(err.get("message") or text)
    head = f"HTTP {status}: " if status else ""
    return DiskLLMError(f"server refused the request: {head}{' '.join(text.split())[:300]}")


@dataclass
class ChatDelta:
    text: str


@dataclass
class ChatDone:
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None  # llama-server extension: prompt/predicted tok/s


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def payload(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages


async def stream_chat(
    base_url: str,
    messages: list[dict[str, str]],
    *,
    model: str = "default",
    client: httpx.AsyncClient | None = None,
    api_key: str | None = None,
    **params: Any,
) -> AsyncIterator[ChatDelta | ChatDone]:
    """POST /v1/chat/completions with stream=True; yield text deltas, then one ChatDone.

    base_url is the server root (http://host:port) or its /v1 URL."""
    url = base_url.rstrip("/")
    url = url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")
    body = {"model": model, "messages": messages, "stream": True,
            "stream_options": {"include_usage": True}, **params}
    own = client is None
    client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
    done = ChatDone()
    try:
        async with client.stream("POST", url, json=body, headers=bearer(api_key)) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", errors="replace")
                raise server_error(resp.status_code, text[:4000])
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # SSE comments, event names, keep-alives
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if "error" in chunk:
                    raise server_error(None, json.dumps(chunk))
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield ChatDelta(text)
                    if choice.get("finish_reason"):
                        done.finish_reason = choice["finish_reason"]
                if chunk.get("usage"):
                    done.usage = chunk["usage"]
                if chunk.get("timings"):
                    done.timings = chunk["timings"]
    except httpx.TransportError as e:
        raise DiskLLMError(f"lost connection to {base_url}: {e}") from None
    finally:
        if own:
            await client.aclose()
    yield done


class ThinkSplitter:
    """Splits streamed text into reasoning (<think>...</think>) and answer parts.

    Tags may arrive split across chunks, so a possible tag prefix at the end of
    a chunk is held back until the next chunk decides it."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self.in_think = False
        self.buf = ""

    def feed(self, text: str) -> list[tuple[str, bool]]:
        """-> [(text, is_reasoning)]"""
        self.buf += text
        out: list[tuple[str, bool]] = []
        while self.buf:
            tag = self.CLOSE if self.in_think else self.OPEN
            i = self.buf.find(tag)
            if i >= 0:
                if i:
                    out.append((self.buf[:i], self.in_think))
                self.buf = self.buf[i + len(tag):]
                self.in_think = not self.in_think
                continue
            keep = 0  # longest suffix that could start the tag
            for k in range(min(len(tag) - 1, len(self.buf)), 0, -1):
                if tag.startswith(self.buf[-k:]):
                    keep = k
                    break
            emit = self.buf[:len(self.buf) - keep]
            if emit:
                out.append((emit, self.in_think))
            self.buf = self.buf[len(self.buf) - keep:]
            break
        return out

    def flush(self) -> list[tuple[str, bool]]:
        rest, self.buf = self.buf, ""
        return [(rest, self.in_think)] if rest else []


def split_think(text: str) -> tuple[str, str]:
    """A finished reply -> (answer, reasoning)."""
    sp = ThinkSplitter()
    parts = sp.feed(text) + sp.flush()
    return ("".join(t for t, r in parts if not r), "".join(t for t, r in parts if r))
