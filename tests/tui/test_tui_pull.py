"""Pulls from the Models pane against the local fake registry (bench/localhub.py):
two at once with live progress, one cancelled, the other installed."""
from __future__ import annotations

import textwrap

import pytest
from textual.widgets import DataTable

from diskllm.core.models.index import ModelIndex
from diskllm.core.paths import Home
from diskllm.testing.fetch import fetch_smollm2
from diskllm.tui.app import Workbench
from diskllm.tui.widgets.pull_row import PullRow
from diskllm.bench.localhub import Blob, FakeHub, FakeHubServer
from tui_helpers import wait_for


@pytest.fixture
def hub():
    h = FakeHub()
    blob = Blob(path=fetch_smollm2())
    h.add_ollama_model("someone/tiny-a:q4", blob)
    h.add_ollama_model("someone/tiny-b:q4", blob)
    with FakeHubServer(h):
        yield h
    h.release.set()


@pytest.fixture
def pull_home(tmp_path, hub, monkeypatch) -> Home:
    h = Home(tmp_path / "home").ensure()
    monkeypatch.setenv("DISKLLM_HOME", str(h.root))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    entries = "".join(textwrap.dedent(f"""
        [registry.models."{n}:q4"]
        description = "SmolLM2 via the fake registry ({n})"
        [[registry.models."{n}:q4".sources]]
        kind = "ollama"
        ref = "someone/{n}:q4"
        """) for n in ("tiny-a", "tiny-b"))
    h.config_file.write_text(textwrap.dedent(f"""\
        [registry]
        ollama_url = "{hub.url}"
        hf_endpoint = "{hub.url}"
        connect_timeout = 2
        """) + entries)
    return h


async def test_two_pulls_progress_cancel_and_install(pull_home: Home, hub: FakeHub):
    hub.stall_after = 8 << 20                    # each download waits at 8 MB for `release`
    # The fake hub sends 8 MB in one burst and then stalls: the rows must still show
    # those bytes (the download reports on a timer, not only when bytes arrive).
    app = Workbench(pull_home)
    async with app.run_test(size=(100, 32)) as pilot:
        screen = app.screen
        # the screen fills its table from the app's ModelsLoaded message a moment later
        await wait_for(pilot, lambda: any(r.name == "tiny-b:q4" for r in screen.available),
                       what="registry listed")
        table = screen.query_one("#available", DataTable)
        names = [r.name for r in screen.available]
        table.focus()
        for name in ("tiny-a:q4", "tiny-b:q4"):
            table.move_cursor(row=names.index(name))
            await pilot.press("p")

        def stalled() -> bool:
            rows = {r.spec: r.event for r in screen.query(PullRow)}
            return len(rows) == 2 and all(e and e.phase == "download" and e.bytes_done > 0
                                          for e in rows.values())
        await wait_for(pilot, stalled, timeout=30, what=f"both pulls downloading: {app.pulls}")
        await pilot.pause(0.3)
        details = [str(r.query_one(".detail").render()) for r in screen.query(PullRow)]
        # bytes done / total, rate, ETA (throttled events: at most the 8 MB the hub lets through)
        assert all("/93.8M" in d and "eta" in d for d in details), details
        assert str(table.get_cell("tiny-a:q4", table.ordered_columns[2].key)).endswith("%")

        table.move_cursor(row=names.index("tiny-b:q4"))
        await pilot.press("c")                     # cancel the selected one
        hub.release.set()
        await wait_for(pilot, lambda: not app.pulls, timeout=60, what="both pulls finished")
        await wait_for(pilot, lambda: app.models and [r.name for r in app.models.installed] == ["tiny-a:q4"],
                       what="tiny-a installed")
        assert [m.name for m in ModelIndex(pull_home).all()] == ["tiny-a:q4"]
        assert list((pull_home.models).glob("*tiny-b*/*.partial")), "cancel keeps the partial for resume"
        assert not list(screen.query(PullRow))
        installed = screen.query_one("#installed", DataTable)
        assert installed.row_count == 1
