"""core's resolve_model: paths, installed names, and registry names pulled through on_pull, silently."""
from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.resolve import resolve_model
from diskllm.core.paths import Home


def test_registry_name_is_pulled_through_the_hook_and_core_prints_nothing(home: Home, tmp_path: Path, capsys):
    home.ensure()
    asked: list[str] = []
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    async def on_pull(spec: str):
        asked.append(spec)
        return SimpleNamespace(path=gguf, name="smollm2:135m")

    got = asyncio.run(resolve_model(home, "smollm2:135m", on_pull=on_pull))
    assert asked == ["smollm2:135m"] and got.path == gguf and got.name == "smollm2:135m"
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_without_a_hook_a_missing_name_is_unknown(home: Home):
    home.ensure()
    with pytest.raises(DiskLLMError, match="unknown model 'smollm2:135m'"):
        asyncio.run(resolve_model(home, "smollm2:135m"))


def test_paths(home: Home, tmp_path: Path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    assert asyncio.run(resolve_model(home, str(gguf))).path == gguf.resolve()
    with pytest.raises(DiskLLMError, match="no such file"):
        asyncio.run(resolve_model(home, str(tmp_path / "nope.gguf")))
