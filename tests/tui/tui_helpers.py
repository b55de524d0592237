"""Helpers for the workbench tests (tests/tui/test_tui_*.py)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.models.index import InstalledModel, ModelIndex, model_slug
from diskllm.core.paths import Home


async def wait_for(pilot, cond: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    """Let the app run (workers, messages, refreshes) until cond() is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or cond}")
        await pilot.pause(0.05)
        await asyncio.sleep(0.05)


def install_model(home: Home, gguf: Path, name: str = "smollm2:135m") -> InstalledModel:
    """Register an existing GGUF in home's model index (a symlink, no copy)."""
    info = read_gguf_info(gguf)
    d = home.models / model_slug(name)
    d.mkdir(parents=True, exist_ok=True)
    link = d / gguf.name
    if not link.exists():
        link.symlink_to(gguf)
    model = InstalledModel(name=name, source="test", digest="sha256:" + "0" * 64, size=gguf.stat().st_size,
                           arch=info.arch, quant=info.quant, context_length=int(info.context_length or 0),
                           pulled_at="2026-01-01T00:00:00+00:00", dir=d, files=[gguf.name])
    ModelIndex(home).add(model)
    return model
