"""core/env.py is the one table of DISKLLM_* variables; docs/config.md and the code follow it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from diskllm.core import env

REPO = Path(__file__).resolve().parents[2]
CODE = ("core", "cli", "tui", "testing", "bench")


def test_config_doc_has_the_table():
    assert env.markdown_table() in (REPO / "docs" / "config.md").read_text(encoding="utf-8")


def test_every_variable_the_code_names_is_in_the_table():
    named = set()
    for folder in CODE:
        for path in (REPO / folder).rglob("*.py"):
            named |= set(re.findall(r"\bDISKLLM_[A-Z_]+\b", path.read_text(encoding="utf-8")))
    table = {v.name.split("=")[0] for v in env.ENV}
    assert named <= table, f"not in core/env.py: {sorted(named - table)}"


def test_unknown_names_are_refused():
    with pytest.raises(KeyError, match="not in diskllm.core.env.ENV"):
        env.env("DISKLLM_NOPE")
