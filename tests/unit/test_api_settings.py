"""Where `diskllm serve` listens, Ollama's keep_alive durations, the non-loopback warning."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
from conftest import free_port

from diskllm.core.api.settings import api_settings, parse_host, parse_keep_alive
from diskllm.core.config import Config
from diskllm.core.errors import DiskLLMError


@pytest.mark.parametrize("value, want", [
    ("0.0.0.0", ("0.0.0.0", 11434)), ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    ("http://localhost:8000", ("localhost", 8000)), (":9001", ("127.0.0.1", 9001)),
    ("[::1]:9002", ("::1", 9002)),
])
def test_parse_host(value, want):
    assert parse_host(value, 11434) == want


def test_env_beats_config_and_flags_beat_env(monkeypatch):
    cfg = Config(api_host="127.0.0.2", api_port=1234, api_key="k")
    monkeypatch.delenv("DISKLLM_API_HOST", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("DISKLLM_API_KEY", raising=False)
    s = api_settings(cfg)
    assert (s.host, s.port, s.api_key) == ("127.0.0.2", 1234, "k")
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:5000")
    assert (api_settings(cfg).host, api_settings(cfg).port) == ("0.0.0.0", 5000)
    monkeypatch.setenv("DISKLLM_API_HOST", "127.0.0.3")
    assert (api_settings(cfg).host, api_settings(cfg).port) == ("127.0.0.3", 1234)
    s = api_settings(cfg, host="127.0.0.4", port=99)
    assert (s.host, s.port, s.loopback) == ("127.0.0.4", 99, True)
    assert not api_settings(cfg, host="0.0.0.0").loopback


@pytest.mark.parametrize("value, secs", [
    (None, 300.0), (0, 0.0), (10, 10.0), ("0", 0.0), ("10s", 10.0), ("5m", 300.0), ("1h30m", 5400.0),
    ("250ms", 0.25), (-1, math.inf), ("-1m", math.inf),
])
def test_keep_alive(value, secs):
    assert parse_keep_alive(value, 300.0) == secs


@pytest.mark.parametrize("value", ["soon", "5x", True, [1]])
def test_bad_keep_alive(value):
    with pytest.raises(DiskLLMError, match="keep_alive"):
        parse_keep_alive(value, 300.0)


def test_non_loopback_without_key_warns(tmp_path):
    env = {"DISKLLM_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "diskllm.cli", "serve", "--host", "0.0.0.0",
                             "--port", str(free_port())], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "Ollama API at" in proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "warning: serving on 0.0.0.0 without an API key" in err and "anyone" in err
