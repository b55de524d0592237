"""Issue 15 item 1: the workbench and a CLI client chatting in two sessions on one server at once
keep their conversations apart (each transcript equals the same conversation run alone)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from diskllm.core.paths import Home
from diskllm.core.sessions import SessionStore
from diskllm.tui.app import Workbench
from test_tui_live import SIZE, _type_prompt, bench_home, send, start_from_models_pane  # noqa: F401
from tui_helpers import wait_for

pytestmark = pytest.mark.slow

FRUIT = ["Name a yellow fruit.", "What colour is a pear?", "Which fruit is red and round?"]
REPEAT = ["Repeat: XYLOPHONE", "Repeat: XYLOPHONE XYLOPHONE", "Repeat: POWER"]
CHAT = [sys.executable, "-m", "diskllm.cli", "chat", "smollm2:135m", "--no-start", "--temperature", "0",
        "--max-tokens", "16", "--session"]


def cli_alone(session: str, turns: list[str]) -> None:
    r = subprocess.run(CHAT + [session], input="\n".join(turns) + "\n", text=True, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr


def feed(proc: subprocess.Popen, turns: list[str], gap: float) -> None:
    for line in turns:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        time.sleep(gap)


async def test_tui_and_cli_at_once(bench_home: Home):
    app = Workbench(bench_home)
    app.chat_params = {"max_tokens": 16, "temperature": 0}
    async with app.run_test(size=SIZE) as pilot:
        await start_from_models_pane(app, pilot)
        cli_alone("alone-fruit", FRUIT)
        cli_alone("alone-repeat", REPEAT)

        await pilot.press("f3")
        await wait_for(pilot, lambda: app.screen is app.panes.get("sessions"))
        await pilot.press("n")
        await _type_prompt(pilot, "tui-fruit")
        await wait_for(pilot, lambda: app.active_session and app.active_session.name == "tui-fruit", what="session")

        proc = subprocess.Popen(CHAT + ["cli-repeat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        feeder = threading.Thread(target=feed, args=(proc, REPEAT, 3.0))
        feeder.start()
        for line in FRUIT:
            await send(app, pilot, line)
        feeder.join()
        _, err = proc.communicate(timeout=300)  # closes stdin: the CLI saves and exits
        assert proc.returncode == 0, err

    store = SessionStore(bench_home)
    assert store.load("cli-repeat").messages == store.load("alone-repeat").messages
    assert store.load("tui-fruit").messages == store.load("alone-fruit").messages
