"""The workbench and RPC workers (issue 17): the start form takes workers and -ngl and
estimates each host; the Memory pane shows a running server's split. Fake data, no server."""
from __future__ import annotations

from dataclasses import replace

from textual.widgets import Input, Static

from diskllm.tui.app import Workbench
from diskllm.tui.screens.memory import MemoryScreen
import tui_fake_data as fake

W = "127.0.0.1:50052,127.0.0.1:50053"


async def test_start_form_estimates_each_host_and_passes_the_workers(app: Workbench):
    started = []
    app.start_model = lambda *a: started.append(a)  # type: ignore[method-assign]
    async with app.run_test(size=(80, 30)) as pilot:
        app.post_message(fake.models_loaded())
        await pilot.pause()
        await pilot.press("down", "s")
        await pilot.pause()
        form = app.screen
        estimate = form.query_one("#estimate", Static)
        form.query_one("#rpc", Input).value = W
        await pilot.pause()
        text = str(estimate.render())
        assert "main host: layers 0-9" in text and "on SSD" in text, text
        assert "worker 127.0.0.1:50053: layers 21-29 + output" in text, text
        form.query_one("#ngl", Input).value = "31"
        await pilot.pause()
        assert "main host: no layers" in str(estimate.render())
        form.query_one("#rpc", Input).value = "nohostport"
        await pilot.pause()
        assert "not HOST:PORT" in str(estimate.render())
        form.query_one("#rpc", Input).value = W
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert started and started[0][4] == W.split(",") and started[0][5] == 31, started


def test_memory_pane_shows_the_split():
    entry = replace(fake.ENTRY,
                    rpc=W.split(","), ngl=21, tensor_split=[11, 10], ctx=4096)
    lines = MemoryScreen._split_lines(entry, fake.SMOL)
    text = "\n".join(lines)
    assert "Split over 2 RPC workers" in text and "(-ngl 21)" in text
    assert "main: layers 0-9" in text and "127.0.0.1:50052: layers 10-20" in text and "(SSD)" in text
    assert MemoryScreen._split_lines(replace(entry, rpc=[]), fake.SMOL) == []


def test_memory_pane_says_why_paging_is_slow():
    """The paging lines: budget, resident set, streamed bytes, and the way the server
    timed faster (patches/0010)."""
    from diskllm.core.server import PagingStats
    p = PagingStats(True, 600 << 20, "cgroup", 1000 << 20, 580 << 20, 420 << 20, 900e6, "stream")
    lines = MemoryScreen._paging_lines(p)
    assert any("budget 600" in x and "(cgroup)" in x for x in lines)
    assert not any("page faults" in x for x in lines)
    assert "by plain page faults (faster here)" in MemoryScreen._paging_lines(replace(p, read_path="faults"))
    assert "in 2 MiB folios" in MemoryScreen._paging_lines(replace(p, large_folios=True))
    assert not any("folios" in x for x in lines)
    assert MemoryScreen._paging_lines(replace(p, active=False)) == []
    assert MemoryScreen._paging_lines(None) == []
