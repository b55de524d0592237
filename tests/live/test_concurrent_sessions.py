"""Issue 15 item 1: two clients on one server never mix their conversations.

Each client is a separate `diskllm chat --session` process pinned to slot 0; the
transcripts they leave must equal those of the same conversations run alone."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, free_port, run_cli
from diskllm.core.paths import Home
from diskllm.core.server import ServerOptions, start_server, stop_server
from diskllm.core.sessions import SessionStore

FRUIT = ["Name a yellow fruit.", "What colour is a pear?", "Which fruit is red and round?"]
REPEAT = ["Repeat: XYLOPHONE", "Repeat: XYLOPHONE XYLOPHONE", "Repeat: POWER"]


def chat_cmd(model: Path, session: str) -> list[str]:
    return [sys.executable, "-m", "diskllm.cli", "chat", str(model), "--no-start", "--temperature", "0",
            "--max-tokens", "16", "--session", session]


def run_alone(model: Path, session: str, turns: list[str]) -> None:
    r = subprocess.run(chat_cmd(model, session), input="\n".join(turns) + "\n", text=True,
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr


def run_together(model: Path, a: tuple[str, list[str]], b: tuple[str, list[str]], gap: float = 4.0) -> None:
    """As two people would: b starts 1 s after a, each types its next line `gap` s after the last."""
    procs = [subprocess.Popen(chat_cmd(model, name), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name, _ in (a, b)]
    schedule = sorted([(i * gap + k, k, line) for k, (_, turns) in enumerate((a, b))
                       for i, line in enumerate(turns)])
    t0 = time.monotonic()
    for at, k, line in schedule:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        procs[k].stdin.write(line + "\n")
        procs[k].stdin.flush()
    for p in procs:
        _, err = p.communicate("", timeout=300)
        assert p.returncode == 0, err


def transcript(home: Home, name: str) -> list[dict[str, str]]:
    return SessionStore(home).load(name).messages


@pytest.mark.parametrize("backend", ["ram", "ssd"])
async def test_two_clients_one_server_equal_alone(home: Home, smollm2_path: Path, server_binary: Path, backend: str):
    opts = ServerOptions(model_path=smollm2_path, ctx=2048, port=free_port(), port_explicit=True,
                         kv_backend=backend, kv_window=1024, threads=2)
    server = await start_server(home, opts, server_binary)
    try:
        run_alone(smollm2_path, "alone1", FRUIT)
        run_alone(smollm2_path, "alone2", REPEAT)
        run_together(smollm2_path, ("q1", FRUIT), ("q2", REPEAT))
        assert transcript(home, "q1") == transcript(home, "alone1")
        assert transcript(home, "q2") == transcript(home, "alone2")
        assert len(transcript(home, "q1")) == 6
    finally:
        await stop_server(server)


async def test_same_session_in_two_clients_is_refused(home: Home, smollm2_path: Path, server_binary: Path,
                                                      kv_backend: str):
    opts = ServerOptions(model_path=smollm2_path, ctx=2048, port=free_port(), port_explicit=True,
                         kv_backend=kv_backend, kv_window=1024, threads=2)
    server = await start_server(home, opts, server_binary)
    first = subprocess.Popen(chat_cmd(smollm2_path, "same"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        first.stdin.write("hi\n")
        first.stdin.flush()
        assert first.stdout.readline()  # banner: the session is open
        r = run_cli(*chat_cmd(smollm2_path, "same")[3:], input="hello\n")
        assert_one_line_error(r, f"session 'same' is open in pid {first.pid}")
    finally:
        first.communicate("", timeout=120)
        await stop_server(server)
