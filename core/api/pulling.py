"""Our pull core's events as Ollama's pull progress: {status, digest, total, completed}."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from diskllm.core.errors import DiskLLMError
from diskllm.core.paths import Home
from diskllm.core.pull import pull
from diskllm.core.pull.events import PullEvent

_STATUS = {"manifest": "pulling manifest", "verify": "verifying sha256 digest", "register": "writing manifest"}


def progress_line(ev: PullEvent) -> dict[str, Any]:
    if ev.phase == "download":
        line: dict[str, Any] = {"status": f"pulling {ev.file or ev.model}", "digest": ev.file or ev.model,
                                "completed": ev.bytes_done}
        if ev.bytes_total:
            line["total"] = ev.bytes_total
        return line
    return {"status": _STATUS.get(ev.phase, ev.phase)}


async def pull_progress(home: Home, name: str) -> AsyncIterator[dict[str, Any]]:
    """Progress lines while `name` is pulled, then {"status": "success"} or {"error": ...}.

    Closing the iterator (the client went away) cancels the pull."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    last: list[dict[str, Any]] = [{}]

    def on_event(ev: PullEvent) -> None:
        line, prev = progress_line(ev), last[0]
        if ev.phase != "download" and prev.get("total") and ev.phase in ("verify", "register"):
            # the bar ends full, as Ollama's does, before the next status
            queue.put_nowait({**prev, "completed": prev["total"]})
            prev = {}
        if line != prev:
            queue.put_nowait(line)
        last[0] = line

    async def run() -> None:
        try:
            await pull(home, name, progress=on_event)
            queue.put_nowait({"status": "success"})
        except DiskLLMError as e:
            queue.put_nowait({"error": str(e)})
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    try:
        while (line := await queue.get()) is not None:
            yield line
    finally:
        if not task.done():
            task.cancel()
