"""Snapshot tests of each pane at 80x24 (pytest-textual-snapshot).

The data is fake but goes through the same messages the real workers post
(tests/tui/tui_fake_data.py); the App runs with live=False, so no worker touches
the machine. Update after an intended change: pytest tests/tui/test_tui_snapshots.py --snapshot-update
"""
from __future__ import annotations

from dataclasses import replace

from diskllm.tui.app import Workbench
import tui_fake_data as fake

SIZE = (80, 24)


async def feed(pilot, *events) -> None:
    app: Workbench = pilot.app
    for ev in events:
        app.post_message(ev)
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    for widget in pilot.app.screen.query("Input, TextArea"):
        widget.cursor_blink = False  # a blinking cursor would make snapshots flaky
    await pilot.pause(0.2)


async def with_server(pilot) -> None:
    await feed(pilot, fake.models_loaded(), fake.server_started(), *fake.memory_samples(),
               fake.log_lines(), fake.sessions_loaded())


def test_models_pane(app, snap_compare):
    async def run_before(pilot):
        await with_server(pilot)
        await feed(pilot, *fake.pulls())
        await settle(pilot)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_pane(app, snap_compare):
    async def run_before(pilot):
        await with_server(pilot)
        await pilot.press("f2")
        await settle(pilot)
        chat = pilot.app.screen
        for ev in fake.CHAT:
            chat.post_message(ev)
        await settle(pilot)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_sessions_pane(app, snap_compare):
    async def run_before(pilot):
        await with_server(pilot)
        await pilot.press("f3")
        await settle(pilot)
        await feed(pilot, fake.switched())
        await settle(pilot)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_memory_pane(app, snap_compare):
    async def run_before(pilot):
        await with_server(pilot)
        await pilot.press("f4")
        await settle(pilot)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_log_pane(app, snap_compare):
    async def run_before(pilot):
        await with_server(pilot)
        await pilot.press("f5")
        await settle(pilot)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_dead_server_offers_restart(app, snap_compare):
    async def run_before(pilot):
        await with_server(pilot)
        await feed(pilot, fake.server_died())
        await settle(pilot)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_start_form(app, snap_compare):
    app.cfg = replace(app.cfg, kv_budget=150)  # the paging estimate's budget: this machine's otherwise

    async def run_before(pilot):
        await feed(pilot, fake.models_loaded())
        await pilot.press("down")   # smollm2:135m
        await pilot.press("s")
        await settle(pilot)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
