"""Issue 15 item 4: an oversized --ctx is refused with the disk-space line before the server reserves it."""
from __future__ import annotations

from pathlib import Path

from conftest import assert_one_line_error, run_cli
from diskllm.core.kv_space import explain_start_failure
from diskllm.core.paths import Home


def test_oversized_ctx_refused_before_start(home: Home, smollm2_path: Path):
    r = run_cli("run", str(smollm2_path), "--headless", "--ctx", "99999999", "--kv-backend", "ssd")
    assert_one_line_error(r, "not enough disk space for the KV cache at --ctx 99999999: need ")
    assert f"free in {home.kv_cache}" in r.err
    assert not list(home.kv_cache.iterdir())  # nothing reserved
    assert not list(home.logs.iterdir())      # no server was started


def test_server_reservation_failure_maps_to_the_disk_line(tmp_path: Path, smollm2_path: Path):
    for log in ("llama_kv_cache: not enough disk space for /x/kv.bin", "main: failed to fit params to free device memory"):
        line = explain_start_failure(log, tmp_path, smollm2_path, 99999999, [])
        assert line and "need " in line and f"free in {tmp_path}" in line
    assert explain_start_failure("error: unknown argument", tmp_path, smollm2_path, 4096, []) is None
