"""The SSD KV backend of the patched llama-server: same outputs as RAM, less private memory,
clean files, clear faults. Real servers on real models (SmolLM2 dense, Gemma-3 iSWA, a
synthesized lfm2 hybrid)."""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import assert_one_line_error, free_port, run_cli
from diskllm.core.paths import Home
from diskllm.core.server import (
    RunningServer, ServerOptions, kv_files, kv_mapping_resident, memory_of, start_server, stop_server,
)
from diskllm.testing.synth import synthesize_hybrid

# A prompt of ~900 tokens: longer than Gemma-3's 512-token sliding window and than the
# --kv-window used below, so cells far behind the head are attended to.
LONG_PROMPT = " ".join(
    f"Item {i}: the {['red', 'green', 'blue', 'amber'][i % 4]} lantern number {i * 7 % 13} "
    f"hangs by door {i % 5}."
    for i in range(70)
) + "\nQuestion: which colour hangs by door 3? Answer:"


@pytest.fixture(scope="session")
def hybrid_path() -> Path:
    return synthesize_hybrid()


async def _start(home: Home, binary: Path, model: Path, backend: str, *, ctx: int = 4096,
                 window: int = 256, extra: list[str] | None = None) -> RunningServer:
    opts = ServerOptions(model_path=model, ctx=ctx, port=free_port(), port_explicit=True,
                         kv_backend=backend, kv_window=window, threads=2, extra_args=extra or [])
    return await start_server(home, opts, binary)


async def _complete(server: RunningServer, prompt: str, n: int = 32) -> dict:
    async with httpx.AsyncClient(timeout=300) as c:
        r = await c.post(server.base_url + "/completion", json={
            "prompt": prompt, "n_predict": n, "temperature": 0, "seed": 1, "top_k": 1,
            "id_slot": 0, "cache_prompt": True, "ignore_eos": True,  # always n tokens to compare
            "n_probs": 3,  # compare the distributions too, not only the argmax text
        })
        r.raise_for_status()
        return r.json()


async def _transcript(server: RunningServer) -> list:
    """Three requests: a long prompt, a continuation that reuses its cells, a short one.
    Returns each reply's text and its top-3 token probabilities at every step."""
    first = await _complete(server, LONG_PROMPT)
    second = await _complete(server, LONG_PROMPT + first["content"] + "\nAnd door 1? Answer:")
    third = await _complete(server, "Once upon a time", n=24)
    return [(r["content"], r["completion_probabilities"]) for r in (first, second, third)]


@dataclass
class Case:
    model: str
    fa: str
    window: int = 256


CASES = [
    Case("smollm2", "on"), Case("smollm2", "off"),
    Case("smollm2", "off", window=16),  # prompt far longer than the window
    Case("gemma3", "on"), Case("gemma3", "off"),
    Case("hybrid", "off"), Case("hybrid", "on"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.model}-fa_{c.fa}-win{c.window}")
async def test_ssd_outputs_equal_ram(case: Case, request: pytest.FixtureRequest, home: Home,
                                     server_binary: Path, monkeypatch: pytest.MonkeyPatch):
    model = request.getfixturevalue({"smollm2": "smollm2_path", "gemma3": "gemma3_path",
                                     "hybrid": "hybrid_path"}[case.model])
    outputs = {}
    # "ssd+prefetch": the read-ahead machinery forced on although nothing is paged, so every
    # graph is planned and its compute split into segments (the path taken under memory
    # pressure, tested here on every cache kind; test_kv_paging.py runs it under a real cap)
    for variant in ("ram", "ssd", "ssd+prefetch"):
        backend = variant.split("+")[0]
        if variant == "ssd+prefetch":
            monkeypatch.setenv("DISKLLM_KV_PREFETCH_FORCE", "1")
        server = await _start(home, server_binary, model, backend, window=case.window,
                              extra=["-fa", case.fa])
        try:
            if backend == "ssd":
                # every cache of this model (kv, swa, rs) is a file of this server
                assert kv_files(home.kv_cache, server.pid), "ssd server made no KV file"
            else:
                assert not kv_files(home.kv_cache, server.pid)
            outputs[variant] = await _transcript(server)
        finally:
            await stop_server(server)
            monkeypatch.delenv("DISKLLM_KV_PREFETCH_FORCE", raising=False)
    print(f"\n{case}: {outputs['ssd'][0][0][:60]!r}")
    assert all(text and probs for text, probs in outputs["ram"]), outputs
    assert outputs["ssd"] == outputs["ram"]
    assert outputs["ssd+prefetch"] == outputs["ram"]


def _tags(files: list[Path]) -> set[str]:
    return {p.stem.rsplit("-", 1)[-1] for p in files}


async def test_every_cache_kind_is_file_backed(home: Home, server_binary: Path, gemma3_path: Path,
                                               hybrid_path: Path):
    for model, expected in ((gemma3_path, {"kv", "swa"}), (hybrid_path, {"kv", "rs"})):
        server = await _start(home, server_binary, model, "ssd")
        try:
            assert _tags(kv_files(home.kv_cache, server.pid)) == expected
        finally:
            await stop_server(server)


async def test_private_memory_and_file_lifecycle(home: Home, server_binary: Path, smollm2_path: Path):
    ctx = 32768
    ram = await _start(home, server_binary, smollm2_path, "ram", ctx=ctx)
    ssd = await _start(home, server_binary, smollm2_path, "ssd", ctx=ctx)
    ssd2 = None
    try:
        for s in (ram, ssd):
            await _complete(s, LONG_PROMPT, n=64)
        ram_mem, ssd_mem = memory_of(ram.pid), memory_of(ssd.pid)
        kv_res = kv_mapping_resident(ssd.pid, home.kv_cache)
        print(f"\nctx {ctx}: RssAnon ram {ram_mem.rss_anon / 2**20:.0f} MiB, ssd {ssd_mem.rss_anon / 2**20:.0f} MiB; "
              f"ssd RssFile {ssd_mem.rss_file / 2**20:.0f} MiB, KV resident {kv_res / 2**20:.1f} MiB")
        # 32768 cells x 23,040 B = 720 MiB of KV: private in ram, file-backed in ssd
        assert ram_mem.rss_anon > 700 * 2**20
        assert ssd_mem.rss_anon / ram_mem.rss_anon < 0.3
        # the filled cells are resident in the file mapping, the untouched ones are not
        assert 0 < kv_res < 200 * 2**20

        files = kv_files(home.kv_cache, ssd.pid)
        assert len(files) == 1 and files[0].stat().st_size >= 32768 * 23040

        # a second server on the same kv dir gets a file of its own
        ssd2 = await _start(home, server_binary, smollm2_path, "ssd", ctx=2048)
        files2 = kv_files(home.kv_cache, ssd2.pid)
        assert len(files2) == 1 and files2[0] != files[0]
        assert files[0].exists()
    finally:
        for s in (ram, ssd, ssd2):
            if s:
                await stop_server(s)
    # a clean exit (SIGTERM) removes the files
    assert not list(home.kv_cache.glob("diskllm-kv-*"))


async def test_stale_file_from_killed_server_is_removed(home: Home, server_binary: Path, smollm2_path: Path):
    victim = await _start(home, server_binary, smollm2_path, "ssd", ctx=2048)
    stale = kv_files(home.kv_cache, victim.pid)
    assert stale
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(10)
    assert all(p.exists() for p in stale)

    server = await _start(home, server_binary, smollm2_path, "ssd", ctx=2048)
    try:
        assert not any(p.exists() for p in stale)
        assert "removed stale KV cache file" in Path(server.entry.log).read_text(errors="replace")
    finally:
        await stop_server(server)


@pytest.fixture
def tiny_kv_dir(home: Home):
    """home.kv_cache on a 16 MiB tmpfs, when this machine lets the test mount one."""
    home.ensure()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(home.kv_cache)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}); "
                    "the full-disk start-up error is not exercised")
    yield home.kv_cache
    subprocess.run(["umount", "-l", str(home.kv_cache)], check=False)


def test_full_disk_is_a_one_line_startup_error(home: Home, tiny_kv_dir: Path, server_binary: Path,
                                              smollm2_path: Path):
    # 8192 cells x 23,040 B = 180 MiB of KV cannot be reserved on 16 MiB
    r = run_cli("run", str(smollm2_path), "--ctx", "8192", "--headless", "--kv-backend", "ssd",
                timeout=120)
    assert_one_line_error(r, "not enough disk space for the KV cache")
    # checked before the server reserves anything (core/kv_space.py): need, free, directory
    assert str(tiny_kv_dir) in r.err and "need 180.0 MiB" in r.err and "16.0 MiB free" in r.err
    assert not list(tiny_kv_dir.iterdir())


async def test_slot_save_restore_with_ssd(home: Home, server_binary: Path, smollm2_path: Path):
    server = await _start(home, server_binary, smollm2_path, "ssd")
    try:
        first = await _complete(server, LONG_PROMPT)
        async with httpx.AsyncClient(timeout=120) as c:
            saved = (await c.post(server.base_url + "/slots/0?action=save", json={"filename": "s.bin"})).json()
            assert saved["n_saved"] > 800
            assert (await c.post(server.base_url + "/slots/0?action=erase")).status_code == 200
            restored = (await c.post(server.base_url + "/slots/0?action=restore",
                                     json={"filename": "s.bin"})).json()
            assert restored["n_restored"] == saved["n_saved"]
        again = await _complete(server, LONG_PROMPT)
        assert again["content"] == first["content"]
        # the whole prompt came from the restored cells (the server re-evaluates the last token)
        assert again["timings"]["cache_n"] >= first["timings"]["prompt_n"] - 1
    finally:
        await stop_server(server)
