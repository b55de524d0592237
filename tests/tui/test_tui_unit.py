"""Workbench behaviour without a server: keys, keymap, exit, clipboard, <think> parsing."""
from __future__ import annotations

from pathlib import Path

import pytest

from diskllm.core.paths import Home
from diskllm.tui.app import Workbench
from diskllm.core.chat import ThinkSplitter, split_think
import tui_fake_data as fake


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Home:
    h = Home(tmp_path / "home").ensure()
    monkeypatch.setenv("DISKLLM_HOME", str(h.root))
    return h


def test_think_splitter_handles_tags_split_across_chunks():
    sp = ThinkSplitter()
    out = []
    for chunk in ["<th", "ink>plan ", "it</th", "ink>Hello", " <", "b>world</b>"]:
        out += sp.feed(chunk)
    out += sp.flush()
    answer = "".join(t for t, r in out if not r)
    reasoning = "".join(t for t, r in out if r)
    assert reasoning == "plan it" and answer == "Hello <b>world</b>"
    assert split_think("<think>x</think>y") == ("y", "x")
    assert split_think("no tags") == ("no tags", "")


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_exit_keys(home, key):
    app = Workbench(home, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        await pilot.press(key)
        await pilot.pause()
    assert app.return_code == 0 and not app.is_running


async def test_ctrl_c_quits_even_while_typing(home):
    app = Workbench(home, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f2")
        await pilot.press("h", "q")       # q types into the prompt there
        assert app.is_running
        assert app.screen.query_one("#prompt").text == "hq"
        await pilot.press("ctrl+c")
        await pilot.pause()
    assert app.return_code == 0


async def test_keymap_from_config(home):
    home.config_file.write_text('[keymap]\n"pane.memory" = "f9"\n"models.start" = "ctrl+t"\n')
    app = Workbench(home, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f9")
        await pilot.pause()
        assert app.current_mode == "memory"
        await pilot.press("f4")              # the old key no longer does it
        await pilot.press("f1")
        await pilot.pause()
        assert app.current_mode == "models"


async def test_every_pane_by_keyboard_at_80x24(home):
    app = Workbench(home, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, mode in (("f2", "chat"), ("f3", "sessions"), ("f4", "memory"), ("f5", "log"), ("f1", "models")):
            await pilot.press(key)
            await pilot.pause()
            assert app.current_mode == mode


async def test_copy_last_reply_uses_the_clipboard(home):
    app = Workbench(home, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(fake.server_started())
        await pilot.press("f2")
        await pilot.pause()
        for ev in fake.CHAT:
            app.screen.post_message(ev)
        await pilot.pause(0.3)
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert app.clipboard == fake.CHAT[-1].reply


async def test_send_without_server_is_a_notice_not_an_error(home):
    app = Workbench(home, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f2")
        await pilot.press("h", "i", "ctrl+j")
        await pilot.pause()
        assert app.screen.current is None
        assert any("no server" in n.message for n in app._notifications)


async def test_dead_server_dialog_restart_key(home, monkeypatch):
    app = Workbench(home, live=False)
    started = []
    monkeypatch.setattr(app, "start_model", lambda *a: started.append(a))
    async with app.run_test(size=(80, 24)) as pilot:
        app.post_message(fake.server_started())
        await pilot.pause()
        app.post_message(fake.server_died())
        await pilot.pause(0.2)
        assert type(app.screen).__name__ == "ServerDiedScreen"
        assert app.status.health == "dead"
        await pilot.press("r")
        await pilot.pause()
    # a restart reuses the dead server's workers and -ngl too (none here)
    assert started == [("smollm2:135m", "/models/smollm2.gguf", 4096, "ssd", [], None)]


def test_bare_diskllm_opens_the_workbench_and_exits_when_the_terminal_goes(home):
    """`diskllm` in a terminal opens the workbench; closing the terminal (SIGHUP,
    as an SSH drop does) ends it cleanly, without a traceback."""
    import os
    import pty
    import select
    import sys
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child: the terminal is the pty
        os.environ["TERM"] = "xterm-256color"
        os.execvp(sys.executable, [sys.executable, "-m", "diskllm"])
    out = b""
    deadline = time.monotonic() + 20
    while b"F1 Models" not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    os.close(fd)  # the terminal goes away
    deadline = time.monotonic() + 15
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the workbench kept running after its terminal closed")
        time.sleep(0.1)
    assert b"F1 Models" in out
    assert b"Traceback" not in out
    assert os.waitstatus_to_exitcode(status) == 0


async def test_command_palette_commands(home):
    app = Workbench(home, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for want in ("Pane: Chat", "Start a server", "Stop the server", "Pull a model", "Copy last reply"):
            assert want in titles
        # run one through the palette, by keyboard
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        for ch in "Pane: Memory":
            await pilot.press(ch if ch != " " else "space")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.current_mode == "memory"
        cmd = next(c for c in app.get_system_commands(app.screen) if c.title == "Copy last reply")
        cmd.callback()   # no chat yet: a notice, no error
        await pilot.pause()


def test_high_rate_messages_replace_a_queued_predecessor():
    """Pull progress, memory samples and live chat stats supersede a queued one of the same stream."""
    from diskllm.core.pull.events import PullEvent
    from diskllm.tui import messages as m

    a = m.PullProgress("x", PullEvent("x", "download", bytes_done=1))
    assert a.can_replace(m.PullProgress("x", PullEvent("x", "download", bytes_done=2)))
    assert not a.can_replace(m.PullProgress("y", PullEvent("y", "download", bytes_done=2)))
    noted = m.PullProgress("x", PullEvent("x", "download", message="resuming"))
    assert not noted.can_replace(a)  # a note is never dropped

    live = m.ChatStats(40.0, 10, 4096)
    assert live.can_replace(m.ChatStats(41.0, 11, 4096))
    assert not m.ChatStats(41.0, 11, 4096, final=True).can_replace(live)

    sample = fake.memory_samples(2)
    first, second = sample
    assert not first.can_replace(second)  # the App keeps every sample for its history
    first.recorded = True
    assert first.can_replace(second)
