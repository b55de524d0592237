"""KV paging under memory pressure (issue 8): a real patched server on SmolLM2 inside a child
memory cgroup too small for its KV + weights, so every token reads pages from storage and
the prefetcher runs. Outputs must equal the RAM backend's; the prefetch thread and the KV
file must go away with the server. Skipped where this process may not create a child
memory cgroup of its own cgroup (the cap is real, not simulated)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from diskllm.bench.cgroup import CgroupUnavailable, MemoryCgroup
from diskllm.bench.machine import drop_file_cache
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.paths import Home
from diskllm.core.server import ServerOptions, build_argv, kv_files, stop_server
from test_kv_backend import LONG_PROMPT, _complete, _start

# ~2,600 tokens: with SmolLM2 that is ~60 MB of KV beside 98 MB of weights
PROMPT = "\n".join(LONG_PROMPT.replace("lantern", word) for word in ("lantern", "kettle", "bell"))
PRIVATE = 64 * 2**20  # RssAnon of the ssd server at -c 4096 is ~45 MB; the rest of the cap is page cache


def _threads(pid: int) -> list[str]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.append((task / "comm").read_text().strip())
        except OSError:
            pass
    return out


def _read_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


async def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as c:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server exited with {proc.returncode} under the cap"
            try:
                if (await c.get(url + "/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    raise AssertionError("server not healthy under the cap")


class _Capped:
    """Just what _complete needs: a base URL."""

    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"


async def _transcript(server) -> list:
    first = await _complete(server, PROMPT, n=24)
    second = await _complete(server, PROMPT + first["content"] + "\nAnd door 4? Answer:", n=24)
    return [(r["content"], r["completion_probabilities"]) for r in (first, second)]


async def test_outputs_equal_ram_while_paging_and_prefetcher_ends_with_server(
        home: Home, server_binary: Path, smollm2_path: Path):
    ram = await _start(home, server_binary, smollm2_path, "ram")
    try:
        expected = await _transcript(ram)
    finally:
        await stop_server(ram)

    info = read_gguf_info(smollm2_path)
    working_set = info.kv_bytes_per_token() * 3000 + info.file_size
    try:
        cg = MemoryCgroup(PRIVATE + working_set // 3)
    except CgroupUnavailable as e:
        pytest.skip(f"no memory cap here ({e}); paging is not exercised")
    drop_file_cache(smollm2_path)  # weights read under the cap are charged to it
    port = free_port()
    opts = ServerOptions(model_path=smollm2_path, ctx=4096, port=port, kv_backend="ssd", kv_window=256, threads=2)
    log = home.logs / "capped.log"
    home.ensure()
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(build_argv(home, opts, server_binary, port), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=cg.preexec)
        try:
            server = _Capped(port)
            await _wait_healthy(server.base_url, proc)
            assert "kv-prefetch" in _threads(proc.pid)
            before = _read_bytes(proc.pid)
            got = await _transcript(server)
            read = _read_bytes(proc.pid) - before
            text = log.read_text(errors="replace")
            print(f"\ncap {cg.limit / 2**20:.0f} MiB for {working_set / 2**20:.0f} MiB of KV + weights: "
                  f"{read / 2**20:.0f} MiB read from storage, cgroup peak {(cg.peak() or 0) / 2**20:.0f} MiB")
            # it really paged: far more was read than the model file, and the prefetcher said so
            assert read > 2 * info.file_size, read
            assert "pages are coming from storage" in text
            assert got == expected
            kv = kv_files(home.kv_cache, proc.pid)
            assert kv
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        # a clean exit: the prefetch thread was joined (a hung thread would keep it alive),
        # and the KV file is gone
        assert rc == 0, rc
        assert not any(p.exists() for p in kv)
        assert not os.path.exists(f"/proc/{proc.pid}")
    finally:
        cg.close()
