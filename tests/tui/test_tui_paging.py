"""The start form says what will stream from the SSD (issue 14): the budget by the
server's own rule (here --kv-budget through config, so the figures are fixed) and the
working set at a full context. Fake model list, no server."""
from __future__ import annotations

from dataclasses import replace

from textual.widgets import Input, Static

from diskllm.tui.app import Workbench
import tui_fake_data as fake


async def test_start_form_says_what_streams_at_a_full_context(app: Workbench):
    app.cfg = replace(app.cfg, kv_budget=150)
    async with app.run_test(size=(80, 30)) as pilot:
        app.post_message(fake.models_loaded())
        await pilot.pause()
        await pilot.press("down", "s")  # smollm2:135m: 98 MB of weights, 23,040 KV bytes per token
        await pilot.pause()
        form = app.screen
        estimate = form.query_one("#estimate", Static)
        form.query_one("#ctx", Input).value = "4096"
        await pilot.pause()
        text = str(estimate.render())
        assert "budget 157 MB (--kv-budget)" in text, text
        # W = 98.4 MB + 23,040 x 4096 = 192.7 MB; 157.3 MB resident: 35 MB streams
        assert "about 35 MB (18%) streams from the SSD per token" in text, text
        form.query_one("#ctx", Input).value = "512"
        await pilot.pause()
        assert "fits the budget: nothing streams" in str(estimate.render())
        await pilot.press("escape")
