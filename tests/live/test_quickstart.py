"""The README's Quick Start, as a new user types it: three lines in one shell."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import assert_one_line_error
from localreg import local_registry, registry_config

from diskllm.core.paths import Home
from diskllm.core.server import list_servers
from diskllm.core.sessions import SessionStore


@pytest.fixture
def hub(smollm2_path: Path):
    with local_registry({"library/smollm2:135m": smollm2_path}) as h:
        yield h


def test_quickstart_three_lines(home: Home, hub, server_binary, tmp_path, monkeypatch):
    registry_config(home, hub.url)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    monkeypatch.setenv("DISKLLM_LLAMA_SERVER", str(server_binary))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "diskllm").write_text(f"#!/bin/sh\nexec {sys.executable} -m diskllm.cli \"$@\"\n")
    (bindir / "diskllm").chmod(0o755)
    script = """
        set -e
        diskllm pull smollm2:135m
        diskllm run smollm2:135m --session demo --headless
        echo "Say hello." | diskllm chat smollm2:135m --session demo --no-start --max-tokens 8
    """
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert any(p.startswith("/v2/library/smollm2/manifests/") for _, p, _ in hub.requests)
    assert "url: http://127.0.0.1:" in r.stdout and "pid: " in r.stdout and "log: " in r.stdout
    servers = list_servers(home)
    assert len(servers) == 1
    pid = servers[0].pid
    # the server runs detached: its own session and process group
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert Path(servers[0].log).parent == home.logs
    # the chat turn is on disk already (autosave after every reply)
    assert [m["role"] for m in SessionStore(home).load("demo").messages] == ["user", "assistant"]
    r = subprocess.run(["sh", "-c", "diskllm stop"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "session demo saved" in r.stderr
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # nothing of the server is left; run/port.lock (serialises port picking) stays, like any lock
    assert list_servers(home) == [] and [p.name for p in home.run.iterdir()] == ["port.lock"]


def test_headless_start_failure_is_one_line(home: Home, server_binary, cli, smollm2_path):
    r = cli("run", str(smollm2_path), "--headless", "--server-arg=--no-such-flag")
    assert_one_line_error(r, "llama-server exited at start")
    assert list_servers(home) == []


def test_headless_api_key_is_required_and_sent_by_chat(home: Home, server_binary, cli, smollm2_path):
    import httpx
    r = cli("run", str(smollm2_path), "--headless", "--ctx", "1024", "--api-key", "k3y", "--session", "locked")
    assert r.rc == 0, r.err
    url = next(ln.split()[1] for ln in r.out.splitlines() if ln.startswith("url:"))
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k3y"}).status_code == 200
    r = cli("chat", str(smollm2_path), "--session", "locked", "--no-start", "--max-tokens", "4", input="Hi\n")
    assert r.rc == 0, r.err
    r = cli("stop")
    assert r.rc == 0 and "session locked saved" in r.err, r.err
