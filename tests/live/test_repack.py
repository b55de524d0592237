"""Repacked weights stay out of private RAM (patches/0005, issue 12).

Real patched servers on a model with Qwen2.5-7B's full matrix sizes in Q4_K (2
layers, synthesized, 0.46 GB): Q4_K is what the CPU backend repacks on x86 with
AVX2 and on ARM, and what the registry's Q4_K_M models are made of."""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.paths import Home
from diskllm.core.models.repack import repack_cache_path, repacked_bytes, repacked_types
from diskllm.core.server import RunningServer, ServerOptions, memory_of, start_server, stop_server
from diskllm.testing.synth import synthesize_qwen7b_full

pytestmark = pytest.mark.skipif(not repacked_types(), reason="this CPU's backend repacks no quant type")

PROMPT = "The quick brown fox jumps over the lazy dog. " * 8


@pytest.fixture(scope="session")
def q4k_model() -> Path:
    return synthesize_qwen7b_full(n_layer=2, quant="Q4_K")


async def _start(home: Home, binary: Path, model: Path, *, backend: str = "ssd", repack: str = "file",
                 extra: list[str] | None = None) -> RunningServer:
    opts = ServerOptions(model_path=model, ctx=2048, port=free_port(), port_explicit=True, kv_backend=backend,
                         threads=2, repack=repack, extra_args=extra or [])
    return await start_server(home, opts, binary, timeout=300)


async def _greedy(server: RunningServer, n: int = 12) -> tuple[str, list]:
    async with httpx.AsyncClient(timeout=300) as c:
        r = await c.post(server.base_url + "/completion", json={
            "prompt": PROMPT, "n_predict": n, "temperature": 0, "top_k": 1, "seed": 1, "id_slot": 0,
            "ignore_eos": True, "n_probs": 3})
        r.raise_for_status()
        j = r.json()
    return j["content"], j["completion_probabilities"]


def _log(server: RunningServer) -> str:
    return Path(server.entry.log).read_text(errors="replace")


async def test_ssd_server_keeps_repacked_weights_out_of_private_ram(home: Home, server_binary: Path, q4k_model: Path):
    """RssAnon with the repack cache is what it is with no repacking at all (compute buffers),
    while upstream's copy puts the repacked weights in private RAM."""
    info = read_gguf_info(q4k_model)
    weights = repacked_bytes(info)
    assert weights > 0.5 * info.file_size  # nearly the whole model is repacked on this CPU
    anon = {}
    for mode in ("ram", "off", "file"):  # upstream, --no-repack, diskllm's default
        s = await _start(home, server_binary, q4k_model, repack=mode)
        try:
            await _greedy(s)
            anon[mode] = memory_of(s.pid).rss_anon
        finally:
            await stop_server(s)
    print(f"\nrepacked weights {weights / 1e6:.0f} MB; RssAnon upstream {anon['ram'] / 1e6:.0f} MB, "
          f"--no-repack {anon['off'] / 1e6:.0f} MB, repack cache {anon['file'] / 1e6:.0f} MB")
    assert anon["ram"] > anon["off"] + 0.8 * weights   # what the test guards against is real here
    assert anon["file"] < anon["off"] + 0.02 * weights
    assert anon["file"] < 0.15 * weights               # compute buffers of a 2-layer model, no weights
    assert _cache_file(home, server_binary, q4k_model).stat().st_size > weights


@pytest.mark.parametrize("backend", ["ssd", "ram"])
async def test_greedy_outputs_equal_upstream_repack(home: Home, server_binary: Path, q4k_model: Path, backend: str):
    """Same kernels, same bytes: the cached copy answers exactly like upstream's anonymous one,
    on a first start (repacking into the cache) and a second (mapping it)."""
    ref = await _start(home, server_binary, q4k_model, backend="ram", repack="ram")
    try:
        expected = await _greedy(ref)
    finally:
        await stop_server(ref)
    cache = _cache_file(home, server_binary, q4k_model)
    written = None
    for start in ("first", "second"):
        s = await _start(home, server_binary, q4k_model, backend=backend)
        try:
            assert await _greedy(s) == expected, start
        finally:
            await stop_server(s)
        if written is None:
            written = _identity(cache)
        else:  # mapped, not rewritten
            assert _identity(cache) == written


def _cache_file(home: Home, binary: Path, model: Path) -> Path:
    return repack_cache_path(home, model, binary)


def _identity(p: Path) -> tuple[int, int]:
    """(inode, mtime): a rebuilt cache is a new file renamed into place."""
    st = p.stat()
    return st.st_ino, st.st_mtime_ns


async def test_cache_is_private_and_written_atomically(home: Home, server_binary: Path, q4k_model: Path):
    s = await _start(home, server_binary, q4k_model)
    try:
        cache = _cache_file(home, server_binary, q4k_model)
        assert cache.is_file()
        assert cache.stat().st_mode & 0o777 == 0o600
        assert home.repack.stat().st_mode & 0o777 == 0o700
        assert not [p for p in home.repack.iterdir() if ".tmp." in p.name]  # renamed into place
    finally:
        await stop_server(s)


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "stale"])
async def test_damaged_cache_is_rebuilt_with_one_warning(home: Home, server_binary: Path, q4k_model: Path,
                                                         damage: str, tmp_path: Path):
    s = await _start(home, server_binary, q4k_model)
    try:
        expected = await _greedy(s)
    finally:
        await stop_server(s)
    cache = _cache_file(home, server_binary, q4k_model)
    size = cache.stat().st_size
    if damage == "truncated":
        os.truncate(cache, size // 2)
    elif damage == "corrupt":
        with open(cache, "r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(4096))
    else:  # the cache of a different model under this model's name: its layout differs
        other = synthesize_qwen7b_full(n_layer=2, quant="Q4_0")
        o = await _start(home, server_binary, other)
        await stop_server(o)
        shutil.copyfile(_cache_file(home, server_binary, other), cache)
    s = await _start(home, server_binary, q4k_model)
    try:
        warnings = [ln for ln in _log(s).splitlines() if "repack cache:" in ln and "rebuilding" in ln]
        assert len(warnings) == 1, _log(s)[-2000:]
        assert {"truncated": "truncated", "corrupt": "corrupt", "stale": "stale"}[damage] in warnings[0]
        assert await _greedy(s) == expected
    finally:
        await stop_server(s)
    rebuilt = _identity(cache)
    s = await _start(home, server_binary, q4k_model)  # the rebuilt file is good: mapped as it is
    try:
        assert "rebuilding" not in _log(s)
    finally:
        await stop_server(s)
    assert _identity(cache) == rebuilt


async def test_two_servers_starting_at_once_leave_one_good_cache(home: Home, server_binary: Path, q4k_model: Path):
    a, b = await asyncio.gather(_start(home, server_binary, q4k_model), _start(home, server_binary, q4k_model))
    try:
        ra, rb = await _greedy(a), await _greedy(b)
        assert ra == rb
    finally:
        await stop_server(a)
        await stop_server(b)
    assert not [p for p in home.repack.iterdir() if ".tmp." in p.name]
    c = await _start(home, server_binary, q4k_model)
    try:
        assert "repack cache:" not in _log(c)  # no warning: the surviving file is valid
        assert await _greedy(c) == ra
    finally:
        await stop_server(c)


def test_cache_key_follows_model_build_and_cpu(tmp_path: Path):
    home = Home(tmp_path)
    m1, m2, b1, b2 = (tmp_path / n for n in ("a.gguf", "b.gguf", "server1", "server2"))
    for p in (m1, m2, b1, b2):
        p.write_bytes(p.name.encode())
    base = repack_cache_path(home, m1, b1, "x86_64:avx2 fma")
    assert base == repack_cache_path(home, m1, b1, "x86_64:avx2 fma")
    assert len({base, repack_cache_path(home, m2, b1, "x86_64:avx2 fma"),
                repack_cache_path(home, m1, b2, "x86_64:avx2 fma"),
                repack_cache_path(home, m1, b1, "x86_64:avx2 avx512f fma")}) == 4
