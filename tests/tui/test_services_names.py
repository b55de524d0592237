"""Every `services.NAME` the screens call exists: a rename in tui/services.py that misses a
screen would otherwise surface only as an "[error: AttributeError]" note in a live chat."""
from __future__ import annotations

import re
from pathlib import Path

from diskllm.tui import services

TUI = Path(__file__).resolve().parents[2] / "tui"


def test_screens_call_only_what_services_has():
    used = {(p.relative_to(TUI).as_posix(), name)
            for p in TUI.rglob("*.py") if p.name != "services.py"
            for name in re.findall(r"\bservices\.([A-Za-z_]\w*)\b", p.read_text(encoding="utf-8"))
            if name != "py"}  # "services.py" in a docstring
    assert used, "the pattern found no calls: the test would pass vacuously"
    assert not [(f, n) for f, n in sorted(used) if not hasattr(services, n)]
