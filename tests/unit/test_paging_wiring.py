"""--kv-budget reaches the server, and its paging figures reach `ps` and the Memory pane
(patches/0006 writes diskllm-kv-<pid>-paging.json beside the KV files)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from diskllm.cli.server import paging_text
from diskllm.core.config import Config
from diskllm.core.errors import DiskLLMError
from diskllm.core.paths import Home
from diskllm.core.server import ServerOptions, build_argv, kv_files, paging_stats

STATS = {"pid": 4242, "active": True, "streaming": True, "budget_bytes": 600 << 20, "budget_source": "cgroup",
         "limit_bytes": 700 << 20, "other_bytes": 50 << 20, "working_set_bytes": 1000 << 20,
         "resident_bytes": 580 << 20, "streamed_bytes_per_token": 420 << 20, "read_bytes_per_token": 430 << 20,
         "read_bytes_per_second": 900 << 20, "decode_tokens": 64, "updated_unix": 1}


def _fake_binary(tmp_path: Path) -> Path:
    """A 'llama-server' whose --help lists the patched flags (build_argv asks it)."""
    b = tmp_path / "llama-server"
    b.write_text("#!/bin/sh\necho '--kv-backend --kv-path --kv-window --kv-prefetch --kv-budget --repack-cache'\n")
    b.chmod(0o755)
    return b


def test_budget_from_config_and_flag_reaches_argv(tmp_path: Path):
    home, binary, model = Home(tmp_path / "h"), _fake_binary(tmp_path), tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    cfg = Config(kv_budget=2048)
    argv = build_argv(home, ServerOptions.from_config(cfg, model), binary)
    assert argv[argv.index("--kv-budget") + 1] == "2048"
    argv = build_argv(home, ServerOptions.from_config(cfg, model, kv_budget=512), binary)
    assert argv[argv.index("--kv-budget") + 1] == "512"
    assert "--kv-budget" not in build_argv(home, ServerOptions.from_config(Config(), model), binary)  # auto
    assert "--kv-budget" not in build_argv(home, ServerOptions.from_config(cfg, model, kv_backend="ram"), binary)



def test_a_budget_for_a_server_without_the_flag_is_an_error_not_ignored(tmp_path: Path):
    home, binary, model = Home(tmp_path / "h"), _fake_binary(tmp_path), tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    binary.write_text("#!/bin/sh\necho '--kv-backend --kv-path --kv-window --kv-prefetch'\n")  # an older build
    with pytest.raises(DiskLLMError, match="has no --kv-budget"):
        build_argv(home, ServerOptions.from_config(Config(kv_budget=2048), model), binary)
    assert "--kv-budget" not in build_argv(home, ServerOptions.from_config(Config(), model), binary)


def test_stats_file_is_read_padded_and_is_not_a_kv_file(tmp_path: Path):
    (tmp_path / "diskllm-kv-4242-paging.json").write_bytes(json.dumps(STATS).encode().ljust(1024, b" "))
    (tmp_path / "diskllm-kv-4242-32768-kv.bin").write_bytes(b"\0")
    p = paging_stats(tmp_path, 4242)
    assert p is not None and p.active and p.budget == 600 << 20 and p.more_ram_helps == 400 << 20
    assert p.read_per_token == 430 << 20
    assert [f.name for f in kv_files(tmp_path, 4242)] == ["diskllm-kv-4242-32768-kv.bin"]
    assert paging_stats(tmp_path, 1) is None


def test_ps_says_why_a_reply_is_slow(tmp_path: Path):
    (tmp_path / "diskllm-kv-4242-paging.json").write_text(json.dumps(STATS))
    text = paging_text(paging_stats(tmp_path, 4242))
    assert "budget 600.0 MiB (cgroup)" in text and "streams 420.0 MiB/token" in text and "+400.0 MiB RAM" in text
    assert "page faults" not in text
    (tmp_path / "diskllm-kv-4242-paging.json").write_text(json.dumps({**STATS, "read_path": "faults"}))
    assert "by plain page faults (timed faster here)" in paging_text(paging_stats(tmp_path, 4242))
    (tmp_path / "diskllm-kv-4242-paging.json").write_text(json.dumps({**STATS, "large_folios": True}))
    assert "in 2 MiB folios" in paging_text(paging_stats(tmp_path, 4242))
    assert paging_text(None) == "-"
    assert paging_text(paging_stats(tmp_path, 1)) == "-"
