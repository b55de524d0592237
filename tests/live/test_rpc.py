"""A model spread over two rpc-server workers on loopback (issue 17): real patched
llama-server, real workers from the same build, SmolLM2 and the synthesized hybrid.

Greedy outputs over the workers equal a single-host run; the main host's layers keep
their KV in the SSD file (sized to those layers only); `ps` lists the workers and
`stop --all` ends them; a worker killed mid-reply gives one line naming it, the server
does not hang, and no KV file is left behind."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import assert_one_line_error, free_port, run_cli
from diskllm.core.build import rpc_server_path
from diskllm.core.paths import Home
from diskllm.core.rpc.probe import probe
from diskllm.core.rpc.endpoints import Endpoint
from diskllm.core.rpc.workers import RunningWorker, WorkerOptions, list_workers, start_worker, stop_worker
from diskllm.core.server import RunningServer, ServerOptions, kv_files, list_servers, start_server, stop_server
from diskllm.testing.synth import synthesize_hybrid

PROMPT = ("The lighthouse keeper wrote in his log every night. On the first night he wrote that the sea "
          "was calm. On the second night he wrote that")
CTX = 1024


@pytest.fixture(scope="session")
def rpc_binary(server_binary: Path) -> Path:
    path = rpc_server_path(server_binary)
    assert path.is_file(), f"the patched build installs rpc-server beside llama-server: {path}"
    return path


@pytest.fixture
async def workers(home: Home, rpc_binary: Path):
    started: list[RunningWorker] = []
    for _ in range(2):
        started.append(await start_worker(home, WorkerOptions(port=free_port(), port_explicit=True, threads=1),
                                          rpc_binary))
    yield [w.entry.address for w in started]
    for w in started:
        await stop_worker(w)


async def _start(home: Home, binary: Path, model: Path, rpc: list[str] | None = None, **kw) -> RunningServer:
    opts = ServerOptions(model_path=model, ctx=CTX, port=free_port(), port_explicit=True, kv_backend="ssd",
                         threads=2, rpc=rpc or [], **kw)
    return await start_server(home, opts, binary)


async def _greedy(server: RunningServer, n: int = 32) -> list[int]:
    async with httpx.AsyncClient(timeout=300) as c:
        r = await c.post(server.base_url + "/completion", json={
            "prompt": PROMPT, "n_predict": n, "temperature": 0, "top_k": 1, "seed": 1,
            "ignore_eos": True, "return_tokens": True})
        r.raise_for_status()
        body = r.json()
    assert body["tokens"] and len(body["tokens"]) == n, body
    return body["tokens"]


def _kv_bytes(home: Home, server: RunningServer) -> int:
    files = kv_files(home.kv_cache, server.pid)
    assert files, "the ssd backend keeps the main host's KV in a file"
    return sum(p.stat().st_size for p in files)


@pytest.mark.parametrize("model", ["smollm2", "hybrid"])
async def test_split_over_two_workers_equals_single_host(model: str, home: Home, server_binary: Path,
                                                         smollm2_path: Path, workers: list[str]):
    path = smollm2_path if model == "smollm2" else synthesize_hybrid()
    single = await _start(home, server_binary, path)
    try:
        want = await _greedy(single)
        kv_single = _kv_bytes(home, single)
    finally:
        await stop_server(single)
    split = await _start(home, server_binary, path, rpc=workers)
    try:
        argv = split.entry.argv
        assert argv[argv.index("--rpc") + 1] == ",".join(workers)
        got = await _greedy(split)
        kv_main = _kv_bytes(home, split)
        assert split.entry.tensor_split and split.entry.ngl > 0
    finally:
        await stop_server(split)
    assert got == want, "greedy tokens over two workers differ from the single-host run"
    if model == "smollm2":  # 10 of 30 layers stay on the main host: their KV only, in the file
        assert kv_main < kv_single * 0.5, (kv_main, kv_single)
    assert not kv_files(home.kv_cache, split.pid)


def test_worker_mem_is_what_clients_see(home: Home, rpc_binary: Path):
    port = free_port()
    r = run_cli("worker", "--headless", "--port", str(port), "--mem", "300", "--threads", "1")
    assert r.rc == 0, r.err
    try:
        info = probe(Endpoint("127.0.0.1", port))
        assert info.devices == 1 and info.free == info.total == 300 << 20 and info.version[0] == 7
    finally:
        assert run_cli("stop", f"127.0.0.1:{port}").rc == 0
    assert not list_workers(home)


def test_ps_lists_workers_and_stop_all_ends_them(home: Home, rpc_binary: Path):
    ports = [free_port(), free_port()]
    for p in ports:
        r = run_cli("worker", "--headless", "--port", str(p), "--threads", "1")
        assert r.rc == 0, r.err
        assert f"--rpc 127.0.0.1:{p}" in r.out
    pids = [w.pid for w in list_workers(home)]
    assert len(pids) == 2
    ps = run_cli("ps")
    assert ps.rc == 0 and "WORKER" in ps.out, ps.out
    for p in ports:
        assert f"127.0.0.1:{p}" in ps.out
    r = run_cli("stop", "--all")
    assert r.rc == 0, r.err
    assert r.out.count("stopped worker") == 2
    assert all(_gone(pid) for pid in pids)
    assert "WORKER" not in run_cli("ps").out


def test_non_loopback_bind_warns(home: Home, rpc_binary: Path):
    r = run_cli("worker", "--headless", "--host", "0.0.0.0", "--port", str(free_port()), "--threads", "1")
    try:
        assert r.rc == 0, r.err
        assert "warning:" in r.err and "no authentication" in r.err and "SSH tunnel" in r.err
    finally:
        run_cli("stop", "--workers")


def test_unreachable_worker_is_one_line_naming_it(home: Home, server_binary: Path, smollm2_path: Path):
    port = free_port()  # nothing listens there
    r = run_cli("run", str(smollm2_path), "--rpc", f"127.0.0.1:{port}", "--ctx", str(CTX), "--headless")
    assert_one_line_error(r, f"worker 127.0.0.1:{port} is unreachable")
    assert not list_servers(home) and not list(home.kv_cache.glob("*.bin"))


async def _wait_generating(base_url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as c:
        while time.monotonic() < deadline:
            try:
                slots = (await c.get(base_url + "/slots")).json()
                if any(s.get("is_processing") and (s.get("next_token") or [{}])[0].get("n_decoded", 0) > 4
                       for s in slots):
                    return
            except (httpx.HTTPError, ValueError, IndexError, AttributeError, TypeError):
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the reply never started")


async def test_worker_killed_mid_reply(home: Home, server_binary: Path, smollm2_path: Path, workers: list[str]):
    r = run_cli("run", str(smollm2_path), "--rpc", ",".join(workers), "--ctx", str(CTX), "--threads", "2",
                "--headless")
    assert r.rc == 0, r.err
    (entry,) = list_servers(home)
    assert kv_files(home.kv_cache, entry.pid)
    chat = subprocess.Popen([sys.executable, "-m", "diskllm.cli", "chat", str(smollm2_path), "--no-start",
                             "--max-tokens", "4000", "--temperature", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert chat.stdin is not None
    chat.stdin.write("Write a very long story about the sea.\n")
    chat.stdin.flush()
    await _wait_generating(entry.base_url)
    victim = next(w for w in list_workers(home) if w.address == workers[1])
    os.kill(victim.pid, signal.SIGKILL)
    out, err = chat.communicate(timeout=60)  # no hang: the reply ends within a minute
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert chat.returncode != 0 and "Traceback" not in err, err
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1, err
    assert f"worker {workers[1]} stopped answering" in lines[-1], err
    print(lines[-1])
    assert not kv_files(home.kv_cache, entry.pid), "the aborted server's KV file is removed"
    assert run_cli("stop", "--all").rc == 0  # the main server stays stoppable (here: already gone)
    assert not list_servers(home) and _gone(entry.pid)


def _gone(pid: int, wait: float = 10) -> bool:
    """Exited (a zombie waiting for its reaper counts: it holds nothing)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False
