"""Minimal streaming client for llama-server's OpenAI-compatible chat endpoint."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import httpx

from diskllm.core.errors import DiskLLMError


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
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", errors="replace")[:300]
                raise DiskLLMError(f"chat request failed: HTTP {resp.status_code}: {text}")
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
                    raise DiskLLMError(f"server error: {chunk['error']}")
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
