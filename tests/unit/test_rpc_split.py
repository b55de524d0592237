"""RPC workers without a server: endpoints, config `rpc`, the layer split and its argv.

The split must be the one llama.cpp makes from the same -ngl and --tensor-split, or
`show` and the start form would estimate a different server: the reference below is
src/llama-model.cpp's assignment, transcribed (float32 fractions, upper_bound)."""
from __future__ import annotations

import bisect
from dataclasses import replace
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from diskllm.core.config import Config, load_config, save_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.paths import Home
from diskllm.core.rpc.endpoints import Endpoint, parse_endpoints
from diskllm.core.rpc.probe import WorkerError, probe
from diskllm.core.rpc.split import default_ngl, plan_split, shares
from diskllm.core.server import ServerOptions, argv_split, build_argv

W2 = ["127.0.0.1:50052", "127.0.0.1:50053"]


def llama_cpp_devices(n_layer: int, ngl: int, split: list[int]) -> list[int | None]:
    """Device of each layer 0..n_layer (n_layer = output) as load_tensors assigns it; None = CPU."""
    f32 = np.float32
    if ngl == 0:
        return [None] * (n_layer + 1)
    cum, s = [], f32(0)
    for x in split:
        s = f32(s + f32(x))
        cum.append(s)
    cum = [f32(c / s) for c in cum]
    start, act = max(n_layer + 1 - ngl, 0), min(ngl, n_layer + 1)
    out: list[int | None] = []
    for il in range(n_layer + 1):
        if il < start or il - start >= act:
            out.append(None)
        else:
            out.append(bisect.bisect_right(cum, f32(f32(il - start) / f32(act))))
    return out


def split_devices(n_layer: int, split) -> list[int | None]:
    out: list[int | None] = []
    for il in range(n_layer + 1):
        dev = None
        for i, h in enumerate(split.hosts[1:]):
            a, b = h.layers
            if a <= il < b or (il == n_layer and h.output):
                dev = i
        out.append(dev)
    return out


def test_endpoints_parse_and_refuse_clearly():
    assert parse_endpoints("127.0.0.1:50052, host-b:7000") == [Endpoint("127.0.0.1", 50052), Endpoint("host-b", 7000)]
    assert parse_endpoints(["a:1"]) == [Endpoint("a", 1)]
    for bad, says in (("127.0.0.1", "HOST:PORT"), ("a:0", "out of range"), ("a:x", "HOST:PORT"),
                      ("[::1]:50052", "IPv6"), ("a:1,a:1", "twice")):
        with pytest.raises(DiskLLMError, match=says):
            parse_endpoints(bad)


def test_config_rpc_is_checked_and_round_trips(tmp_path: Path):
    home = Home(tmp_path / "h").ensure()
    home.config_file.write_text('rpc = ["10.0.0.2:50052", "10.0.0.3:50052"]\n')
    assert load_config(home).rpc == ["10.0.0.2:50052", "10.0.0.3:50052"]
    save_config(home, load_config(home))
    assert load_config(home).rpc == ["10.0.0.2:50052", "10.0.0.3:50052"]
    home.config_file.write_text('rpc = "10.0.0.2"\n')
    with pytest.raises(DiskLLMError, match="'rpc' must be a list"):
        load_config(home)
    home.config_file.write_text('rpc = ["10.0.0.2"]\n')
    with pytest.raises(DiskLLMError, match="'rpc'.*HOST:PORT"):
        load_config(home)
    save_config(home, Config())  # no workers: no key written
    assert "rpc" not in home.config_file.read_text()


def test_shares_are_exact_and_deterministic():
    assert shares(21, None, 2) == [11, 10]
    assert shares(21, [1000, 999], 2) == [11, 10]          # within 1%: equal
    assert shares(20, [3000, 1000], 2) == [15, 5]
    assert shares(3, [1, 1, 1, 1], 4) == [1, 1, 1, 0]
    assert sum(shares(31, [7, 5, 3], 3)) == 31


@pytest.mark.parametrize("n_layer", [6, 30, 32])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_split_matches_llama_cpp_assignment(smollm2_path: Path, n_layer: int, workers: int):
    info = read_gguf_info(smollm2_path)
    info.n_layer = n_layer  # the assignment depends on the count only
    names = [f"127.0.0.1:{50052 + i}" for i in range(workers)]
    for ngl in (None, 0, 1, 2, n_layer // 2, n_layer, n_layer + 1, n_layer + 5):
        for weights in (None, [3 << 30] + [1 << 30] * (workers - 1)):
            s = plan_split(info, 4096, names, ngl, weights)
            assert split_devices(n_layer, s) == llama_cpp_devices(n_layer, s.ngl, list(s.counts)), (ngl, weights)


def test_split_of_smollm2_counts_every_byte(smollm2_path: Path):
    info = read_gguf_info(smollm2_path)
    s = plan_split(info, 4096, W2)
    assert s.ngl == default_ngl(30, 2) == 21 and s.counts == (11, 10)
    assert [h.layers for h in s.hosts] == [(0, 10), (10, 21), (21, 30)] and s.hosts[2].output
    assert sum(h.weights for h in s.hosts) == sum(t.n_bytes for t in info.tensors)
    assert sum(h.kv for h in s.hosts) == info.kv_bytes(4096)
    assert s.main.kv == 10 * 23040 // 30 * 4096       # 10 of 30 layers' f16 KV
    all_on_workers = plan_split(info, 4096, W2, ngl=99)
    assert all_on_workers.main.n_layers == 0 and all_on_workers.main.kv == 0


def _fake_binary(tmp_path: Path, rpc: bool = True) -> Path:
    b = tmp_path / "llama-server"
    flags = "--kv-backend --kv-path --kv-window --kv-prefetch --kv-budget --repack-cache" + (" --rpc" if rpc else "")
    b.write_text(f"#!/bin/sh\necho '{flags}'\n")
    b.chmod(0o755)
    return b


def test_argv_carries_workers_and_the_exact_split(tmp_path: Path, smollm2_path: Path):
    home, binary = Home(tmp_path / "h"), _fake_binary(tmp_path)
    plain = build_argv(home, ServerOptions.from_config(Config(), smollm2_path), binary)
    assert plain[plain.index("-ngl") + 1] == "0" and "--rpc" not in plain
    cfg = Config(rpc=W2)
    argv = build_argv(home, ServerOptions.from_config(cfg, smollm2_path, ctx=2048), binary)
    assert argv[argv.index("--rpc") + 1] == ",".join(W2)
    assert argv_split(argv) == (21, [11, 10]) and argv[argv.index("--tensor-split") + 1] == "11,10"
    argv = build_argv(home, ServerOptions.from_config(cfg, smollm2_path, ngl=31, rpc_weights=[3, 1]), binary)
    assert argv_split(argv) == (31, [23, 8])
    # the form's "this host only" ([]) wins over config's workers
    assert "--rpc" not in build_argv(home, ServerOptions.from_config(cfg, smollm2_path, rpc=[]), binary)
    with pytest.raises(DiskLLMError, match="--ngl offloads layers to RPC workers"):
        build_argv(home, ServerOptions.from_config(Config(), smollm2_path, ngl=4), binary)
    (tmp_path / "cpu-only").mkdir()
    with pytest.raises(DiskLLMError, match="no RPC backend"):
        build_argv(home, ServerOptions.from_config(cfg, smollm2_path), _fake_binary(tmp_path / "cpu-only", rpc=False))


def test_probe_names_a_closed_port_and_a_silent_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WorkerError, match=rf"worker 127.0.0.1:{port} is unreachable"):
        probe(Endpoint("127.0.0.1", port), timeout=1)
    # a worker busy with another client accepts (backlog) but never answers the handshake
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    held: list[socket.socket] = []
    t = threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True)
    t.start()
    try:
        with pytest.raises(WorkerError, match="accepts but does not answer.*another llama-server"):
            probe(Endpoint("127.0.0.1", srv.getsockname()[1]), timeout=1)
    finally:
        for c in held:
            c.close()
        srv.close()


def test_only_the_patched_build_has_rpc():
    from diskllm.core.build import BuildSpec, cache_key
    patched, stock = BuildSpec(), BuildSpec(stock=True)
    assert "-DGGML_RPC=ON" in patched.cmake_flags and ("ggml-rpc-server", "rpc-server") in patched.extra_targets
    assert "-DGGML_RPC=ON" not in stock.cmake_flags and not stock.extra_targets
    bare = replace(patched.pin, patched_cmake_flags=(), extra_targets=())
    assert cache_key(BuildSpec(pin=bare)) != cache_key(patched)  # RPC is part of the key


def test_kv_file_need_counts_the_main_hosts_layers_only(smollm2_path: Path):
    from diskllm.core.kv_space import kv_need
    info = read_gguf_info(smollm2_path)
    s = plan_split(info, 8192, W2)
    assert kv_need(info, 8192, [], range(*s.main.layers)) == s.main.kv == kv_need(info, 8192, []) // 3
    assert kv_need(info, 8192, ["-ctk", "q8_0", "-ctv", "q8_0"], range(0, 30)) < kv_need(info, 8192, [])
