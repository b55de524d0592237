"""Fixtures shared by the workbench tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from diskllm.core.paths import Home
from diskllm.tui.app import Workbench


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workbench:
    """A workbench on an empty home that starts no workers (the tests feed it messages)."""
    home = Home(tmp_path / "home")
    monkeypatch.setenv("DISKLLM_HOME", str(home.root))
    monkeypatch.delenv("DISKLLM_LLAMA_SERVER", raising=False)
    return Workbench(home, live=False)
