"""Workbench flows against a real llama-server on SmolLM2 (Pilot, app.run_test)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.widgets import DataTable, Markdown, TextArea

from diskllm.core.paths import Home
from diskllm.core.server import list_servers, memory_of
from diskllm.tui.app import Workbench
from diskllm.tui.screens.chat import ChatScreen, UserMessage
from diskllm.tui.state import human_bytes
from diskllm.tui.widgets.metric import MetricRow
from tui_helpers import install_model, wait_for

pytestmark = pytest.mark.slow

SIZE = (100, 32)


@pytest.fixture
def bench_home(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str, build_cache) -> Home:
    """A home with SmolLM2 installed and a small ctx; the build cache holds the server."""
    home.ensure()
    home.config_file.write_text(f'ctx = 2048\nthreads = 2\nkv_backend = "{kv_backend}"\nport = 18090\n')
    install_model(home, smollm2_path)
    return home


async def start_from_models_pane(app: Workbench, pilot) -> None:
    await wait_for(pilot, lambda: app.models and app.models.installed, what="models listed")
    table = app.screen.query_one("#installed", DataTable)
    table.focus()
    await pilot.press("s")                      # the start form
    await wait_for(pilot, lambda: app.screen.__class__.__name__ == "StartServerScreen", what="start form")
    await pilot.press("ctrl+s")                 # ctx and backend from config.toml
    await wait_for(pilot, lambda: app.status.health == "healthy", timeout=180, what="server healthy")


async def send(app: Workbench, pilot, text: str) -> ChatScreen:
    await pilot.press("f2")
    chat = await wait_for(pilot, lambda: app.panes.get("chat") if app.screen is app.panes.get("chat") else None)
    area = chat.query_one("#prompt", TextArea)
    area.focus()
    area.text = text
    await pilot.press("ctrl+j")
    await wait_for(pilot, lambda: chat.current is None and chat.last_reply, timeout=120, what="a reply")
    return chat


async def test_start_chat_memory(bench_home: Home):
    app = Workbench(bench_home)
    app.chat_params = {"max_tokens": 24, "temperature": 0}
    async with app.run_test(size=SIZE) as pilot:
        await start_from_models_pane(app, pilot)
        entry = app.server
        assert entry is not None and [e.pid for e in list_servers(bench_home)] == [entry.pid]
        assert app.status.model == "smollm2:135m" and app.status.ctx == 2048

        chat = await send(app, pilot, "Name a colour.")
        answers = [md for md in chat.query(".answer").results(Markdown)]
        assert answers and answers[-1].source.strip() == chat.last_reply.strip() != ""
        assert [u.content for u in chat.query(UserMessage)] == ["Name a colour."] or \
            str(chat.query_one(UserMessage).render()) == "Name a colour."
        stats = str(chat.query_one("#chat-stats").render())
        assert "tok/s" in stats and "/2,048" in stats

        # Esc cancels a running reply; what came so far stays, marked as cancelled.
        app.chat_params = {"max_tokens": 400, "temperature": 0, "ignore_eos": True}
        area = chat.query_one("#prompt", TextArea)
        area.text = "Write a long story about a lighthouse."
        await pilot.press("ctrl+j")
        await wait_for(pilot, lambda: chat.current is not None and len(chat.reply_parts) >= 3, what="streaming")
        await pilot.press("escape")
        await wait_for(pilot, lambda: chat.current is None, what="cancelled")
        notes = [str(n.render()) for n in chat.query(".note")]
        assert notes == ["[cancelled]"]
        assert len(chat.last_reply) > 0 and chat.history[-1]["role"] == "assistant"
        app.chat_params = {"max_tokens": 24, "temperature": 0}

        # Memory monitor: non-zero figures that match /proc within tolerance.
        await pilot.press("f4")
        await wait_for(pilot, lambda: len(app.memory) >= 2, timeout=20, what="memory samples")
        sample = app.memory[-1]
        now = memory_of(entry.pid)
        assert sample.rss_anon > 0 and sample.rss_file > 0 and sample.sys_available > 0
        assert abs(sample.rss_anon - now.rss_anon) <= max(32 << 20, 0.25 * now.rss_anon)
        assert abs(sample.rss_file - now.rss_file) <= max(32 << 20, 0.25 * now.rss_file)
        if entry.kv_backend == "ssd":
            assert sample.kv_disk > 0 and sample.kv_resident > 0
        screen = app.panes["memory"]
        await wait_for(pilot, lambda: str(screen.query_one("#metric-rss_anon", MetricRow)
                                          .query_one(".value").render()) != "-", what="figures shown")
        shown = str(screen.query_one("#metric-rss_anon", MetricRow).query_one(".value").render())
        assert shown == human_bytes(app.memory[-1].rss_anon) or shown in {human_bytes(s.rss_anon) for s in app.memory}

        # The log pane tails the server's log.
        await pilot.press("f5")
        await wait_for(pilot, lambda: len(app.log_lines) > 5, what="log lines")

        # Stop from the keyboard; the status bar follows.
        await pilot.press("x")
        await wait_for(pilot, lambda: app.status.health == "none", timeout=30, what="server stopped")
        assert list_servers(bench_home) == []


async def _type_prompt(pilot, text: str) -> None:
    for ch in text:
        await pilot.press(ch)
    await pilot.press("enter")


async def test_switch_sessions(bench_home: Home):
    app = Workbench(bench_home)
    app.chat_params = {"max_tokens": 12, "temperature": 0}
    async with app.run_test(size=SIZE) as pilot:
        await start_from_models_pane(app, pilot)

        # n creates session "alpha" for the running model and makes it active
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.screen is app.panes.get("sessions"))
        await pilot.press("n")
        await _type_prompt(pilot, "alpha")
        await wait_for(pilot, lambda: app.active_session and app.active_session.name == "alpha", what="alpha")
        chat = await send(app, pilot, "My name is Alice.")
        alice_reply = chat.last_reply

        await pilot.press("f3")
        await pilot.press("n")
        await _type_prompt(pilot, "beta")
        await wait_for(pilot, lambda: app.active_session and app.active_session.name == "beta", what="beta")
        await pilot.press("f2")
        await wait_for(pilot, lambda: not chat.history, what="beta's empty transcript")
        await send(app, pilot, "My name is Bob.")

        # one key: select alpha and press enter
        await pilot.press("f3")
        sessions = app.panes["sessions"]
        table = sessions.query_one(DataTable)
        await wait_for(pilot, lambda: [r.name for r in sessions.rows] == ["alpha", "beta"], what="both listed")
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.active_session and app.active_session.name == "alpha", what="switch")
        report = str(sessions.query_one("#switch-report").render())
        assert "Active: alpha" in report and "restored" in report and "saved beta" in report
        assert "cache reuse verified" in report, report

        await pilot.press("f2")
        await wait_for(pilot, lambda: [x["content"] for x in chat.history][:1] == ["My name is Alice."],
                       what="alpha's transcript in the chat pane")
        assert chat.history[1]["content"].strip() == alice_reply.strip()
        users = [str(u.render()) for u in chat.query(UserMessage)]
        assert users == ["My name is Alice."]


async def test_quit_stops_the_server_it_started(bench_home: Home):
    app = Workbench(bench_home)
    async with app.run_test(size=SIZE) as pilot:
        await start_from_models_pane(app, pilot)
        pid = app.server.pid
        await pilot.press("f4")
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, timeout=30, what="exit")
    assert app.return_code == 0
    assert pid not in [e.pid for e in list_servers(bench_home)]


async def test_gemma3_session_switch_reuses_the_restored_kv(home: Home, gemma3_path: Path, server_binary: Path,
                                                            kv_backend: str):
    """A sliding-window model: the workbench starts it with the session flags (--swa-full),
    so switching back to a session reuses its whole restored KV, as `run --session` does."""
    home.ensure()
    home.config_file.write_text(f'ctx = 2048\nthreads = 2\nkv_backend = "{kv_backend}"\nport = 18091\n')
    install_model(home, gemma3_path, name="gemma3:270m")
    app = Workbench(home)
    app.chat_params = {"max_tokens": 8, "temperature": 0}
    async with app.run_test(size=SIZE) as pilot:
        await start_from_models_pane(app, pilot)
        assert "--swa-full" in app.server.argv
        for name, text in (("alpha", "My name is Alice."), ("beta", "My name is Bob.")):
            await pilot.press("f3")
            await wait_for(pilot, lambda: app.screen is app.panes.get("sessions"))
            await pilot.press("n")
            await _type_prompt(pilot, name)
            await wait_for(pilot, lambda: app.active_session and app.active_session.name == name, what=name)
            await send(app, pilot, text)
        await pilot.press("f3")
        sessions = app.panes["sessions"]
        report = sessions.query_one("#switch-report")
        app.switch_session("alpha")
        await wait_for(pilot, lambda: "Active: alpha" in str(report.render()), timeout=60, what="switch to alpha")
        text = str(report.render())
        assert "cache reuse verified" in text, text
        restored = int(re.search(r"restored ([\d,]+) tokens", text).group(1).replace(",", ""))
        reused = int(re.search(r"reused (\d+)/(\d+) tokens", text).group(1))
        assert restored > 0 and reused >= restored - 1, text
