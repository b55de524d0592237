"""A real llama-server on SmolLM2: start, health, OpenAI client, ps, stop."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from openai import OpenAI

from conftest import free_port, run_cli
from diskllm.core.chat import ChatDelta, ChatDone, stream_chat
from diskllm.core.paths import Home
from diskllm.core.server import (
    ServerOptions, kv_disk_bytes, kv_mapping_resident, list_servers, memory_of,
    start_server, stop_server,
)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_start_complete_ps_stop(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str):
    port = free_port()
    opts = ServerOptions(model_path=smollm2_path, ctx=2048, port=port, port_explicit=True,
                         kv_backend=kv_backend, kv_window=1024, threads=2)
    server = await start_server(home, opts, server_binary)
    pid = server.pid
    try:
        assert server.entry.port == port
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200
            assert (await c.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        resp = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Name a colour."}],
            temperature=0, max_tokens=16,
        )
        assert resp.choices[0].message.content.strip()

        # Our own streaming client sees deltas and the final timings.
        events = [ev async for ev in stream_chat(server.base_url, [{"role": "user", "content": "Hi"}],
                                                  max_tokens=8, temperature=0)]
        assert any(isinstance(e, ChatDelta) and e.text for e in events)
        assert isinstance(events[-1], ChatDone) and events[-1].timings

        entry_file = home.run / f"{pid}.json"
        assert json.loads(entry_file.read_text())["port"] == port
        assert [e.pid for e in list_servers(home)] == [pid]

        mem = memory_of(pid)
        assert mem.rss_anon > 0 and mem.rss_file > 0 and mem.vm_hwm >= mem.rss_anon
        assert kv_mapping_resident(pid, home.kv_cache) >= 0
        assert kv_disk_bytes(home.kv_cache, pid) >= 0

        r = run_cli("ps")
        assert r.rc == 0, r.err
        header, *rows = r.out.strip().splitlines()
        assert header.split()[:6] == ["MODEL", "PID", "PORT", "CTX", "KV", "UPTIME"]
        assert "PRIVATE RAM" in header
        row = next(ln for ln in rows if str(pid) in ln)
        assert smollm2_path.stem in row and str(port) in row and "2048" in row and kv_backend in row

        r = run_cli("stop", smollm2_path.stem)
        assert r.rc == 0, r.err
        assert f"pid {pid}" in r.out
        server.process.wait(timeout=5)  # reap our child
        assert _gone(pid)
        assert not entry_file.exists()
        assert run_cli("ps").out.strip().splitlines()[1:] == []
    finally:
        await stop_server(server, grace=2)
    # The SSD backend removes its KV files on clean exit.
    assert kv_disk_bytes(home.kv_cache, pid) == 0


async def test_implicit_busy_port_moves_on(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        opts = ServerOptions(model_path=smollm2_path, ctx=512, port=busy, kv_backend=kv_backend)
        server = await start_server(home, opts, server_binary)
        try:
            assert server.entry.port != busy and server.entry.port > busy
        finally:
            await stop_server(server)
    assert _gone(server.pid)


async def test_servers_started_at_once_get_their_own_ports(home: Home, smollm2_path: Path, server_binary: Path,
                                                           kv_backend: str):
    """Two starts at once on the same implicit port (the daemon loading two models): each
    server gets a port of its own, and each answers as itself."""
    port = free_port()
    opts = [ServerOptions(model_path=smollm2_path, ctx=512, port=port, kv_backend=kv_backend, model_name=f"s{i}")
            for i in range(2)]
    servers = await asyncio.gather(*(start_server(home, o, server_binary) for o in opts))
    try:
        assert len({s.entry.port for s in servers}) == 2, [s.entry.port for s in servers]
        for s in servers:
            listening = {c.laddr.port for c in psutil.Process(s.pid).net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN}
            assert listening == {s.entry.port}, (s.entry.port, listening)
            assert httpx.get(s.base_url + "/health", timeout=10).status_code == 200
    finally:
        for s in servers:
            await stop_server(s)


def test_stale_registry_entries_are_pruned(home: Home):
    home.ensure()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    entry = dict(pid=dead.pid, port=1, host="127.0.0.1", model="ghost", model_path="/x", ctx=1,
                 kv_backend="ram", kv_window=1, binary="/x", log=str(home.logs / "x.log"),
                 started_at=time.time(), create_time=time.time(), argv=[])
    (home.run / f"{dead.pid}.json").write_text(json.dumps(entry))
    # A live pid that is not our server (create_time differs) is stale too.
    me = psutil.Process()
    (home.run / f"{me.pid}.json").write_text(json.dumps({**entry, "pid": me.pid, "create_time": 1.0}))
    (home.run / "garbage.json").write_text("{not json")
    assert list_servers(home) == []
    assert list(home.run.glob("*.json")) == []


def test_cli_run_headless_chat_and_stop_all(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "diskllm.cli.main", "run", str(smollm2_path), "--headless",
         "--port", str(port), "--ctx", "1024", "--kv-backend", kv_backend],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("OpenAI base_url:"):
                break
        assert lines and lines[-1].strip() == f"OpenAI base_url: http://127.0.0.1:{port}/v1", (
            lines, proc.stderr.read() if proc.poll() is not None else "")
        # `chat` reuses the running server: no second one is started.
        r = run_cli("chat", smollm2_path.stem, "--no-start", input="Say one word.\n/bye\n", timeout=120)
        assert r.rc == 0, r.err
        assert r.out.strip() and len(list_servers(home)) == 1
        r = run_cli("stop", "--all")
        assert r.rc == 0 and "stopped" in r.out, r.err
        assert proc.wait(timeout=30) == 0
        assert list_servers(home) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_run_with_chat_stops_server_at_eof(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str):
    r = run_cli("run", str(smollm2_path), "--ctx", "1024", "--kv-backend", kv_backend,
                input="Hello!\n", timeout=180)
    assert r.rc == 0, r.err
    assert "OpenAI base_url: http://127.0.0.1:" in r.out
    assert list_servers(home) == []
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(home.sessions) in (p.info["cmdline"] or [])]
