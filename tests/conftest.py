"""Shared fixtures: one llama-server build per cache, real models, per-test homes.

Layout: unit/ runs without a llama-server, live/ needs the built server, tui/
drives the workbench (Pilot, snapshots). Every test that needs the server is
marked slow, wherever it lives."""
from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from diskllm.core.build import ensure_server, server_supports_kv_flags
from diskllm.core.paths import Home
from diskllm.testing.fetch import fetch_gemma3, fetch_smollm2

DEFAULT_BUILD_CACHE = Path.home() / ".cache" / "diskllm" / "build"
LIVE = Path(__file__).parent / "live"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LIVE in Path(item.path).parents or "server_binary" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def build_cache() -> Path:
    """All tests (and their CLI subprocesses) share one build cache across runs."""
    path = Path(os.environ.get("DISKLLM_BUILD_CACHE") or DEFAULT_BUILD_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["DISKLLM_BUILD_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def build_home(build_cache: Path) -> Home:
    """A persistent home for builds, so the sdist is downloaded once per machine."""
    return Home(build_cache / ".home").ensure()


_STEPS = ("building ", "using cached", "downloading", "extracting", "applying", "no patches",
          "stock build", "configuring", "compiling", "installed", "waiting for")


class _BuildReporter:
    """Shows build steps and every 10% of compile progress on the real terminal."""

    def __init__(self, config: pytest.Config) -> None:
        self.capman = config.pluginmanager.getplugin("capturemanager")
        self.last_decile = -1

    def __call__(self, line: str) -> None:
        m = re.match(r"\[\s*(\d+)%\]", line)
        if m:
            decile = int(m.group(1)) // 10
            if decile == self.last_decile:
                return
            self.last_decile = decile
        elif not line.startswith(_STEPS):
            return
        with self.capman.global_and_fixture_disabled():
            tail = "\n" if line.startswith("installed") else ""
            print(f"\n[build] {line}", file=sys.stderr, flush=True, end=tail)


@pytest.fixture(scope="session")
def server_binary(build_home: Home, pytestconfig: pytest.Config) -> Path:
    """The PATCHED llama-server (patches/ applied), built on first use."""
    return asyncio.run(ensure_server(build_home, progress=_BuildReporter(pytestconfig), use_override=False))


@pytest.fixture(scope="session")
def kv_backend(server_binary: Path) -> str:
    """ssd once the patch series provides it; ram on a server without --kv-backend."""
    return "ssd" if server_supports_kv_flags(server_binary) else "ram"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return fetch_smollm2()


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return fetch_gemma3()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build_cache: Path):
    """A fresh DISKLLM_HOME per test; the build cache stays shared. Kills its servers after."""
    h = Home(tmp_path / "home")
    monkeypatch.setenv("DISKLLM_HOME", str(h.root))
    monkeypatch.delenv("DISKLLM_LLAMA_SERVER", raising=False)
    monkeypatch.setenv("DISKLLM_BUILD_CACHE", str(build_cache))
    yield h
    _kill_servers_of(h)


def _kill_servers_of(h: Home) -> None:
    # Every server we start gets --slot-save-path <home>/sessions: that identifies ours.
    marker = str(h.sessions)
    victims = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if marker in cmd:
            victims.append(p)
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=10)


@dataclass
class CliResult:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


def run_cli(*args: str, input: str | None = None, timeout: float = 600) -> CliResult:
    """Run `diskllm ARGS` in a subprocess with the current environment."""
    r = subprocess.run(
        [sys.executable, "-m", "diskllm.cli", *args],
        input=input, capture_output=True, text=True, timeout=timeout,
    )
    return CliResult(r.returncode, r.stdout, r.stderr)


@pytest.fixture
def cli():
    return run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(r: CliResult, contains: str = "") -> None:
    assert r.rc != 0, (r.out, r.err)
    assert "Traceback" not in r.err, r.err
    lines = r.err_lines
    assert len(lines) >= 1 and lines[-1].startswith("error: "), r.err
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, r.err
    assert contains in errors[0], errors[0]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A workbench on an empty home that starts no workers (the tests feed it messages).

    Lives here, not in tests/tui/conftest.py: a second conftest.py would take the
    module name `conftest` that the tests import their helpers from."""
    from diskllm.tui.app import Workbench

    home = Home(tmp_path / "home")
    monkeypatch.setenv("DISKLLM_HOME", str(home.root))
    monkeypatch.delenv("DISKLLM_LLAMA_SERVER", raising=False)
    return Workbench(home, live=False)
