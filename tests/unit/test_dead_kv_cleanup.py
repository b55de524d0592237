"""remove_dead_kv_files: a KV file whose lock is still held stays, unless the caller
knows the server is dead and waits for the lock (its last threads may still be exiting,
as after an RPC abort: the CI failure of test_worker_killed_mid_reply)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from diskllm.core.server import remove_dead_kv_files

_HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "rb")
fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(path: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_held_lock_is_left_without_wait(tmp_path: Path):
    kv = tmp_path / "diskllm-kv-4242-0-kv.bin"
    kv.write_bytes(b"\0" * 4096)
    p = _holder(kv, 30)
    try:
        assert remove_dead_kv_files(tmp_path, 4242) == []
        assert kv.exists(), "a live server's KV file is never removed"
    finally:
        p.kill()
        p.wait()


def test_wait_removes_once_the_lock_goes(tmp_path: Path):
    kv = tmp_path / "diskllm-kv-4243-0-kv.bin"
    kv.write_bytes(b"\0" * 4096)
    (tmp_path / "diskllm-kv-4243-paging.json").write_text("{}")
    p = _holder(kv, 0.5)
    t0 = time.monotonic()
    try:
        assert remove_dead_kv_files(tmp_path, 4243, wait=10.0) == [kv]
    finally:
        p.wait()
    assert not kv.exists() and not (tmp_path / "diskllm-kv-4243-paging.json").exists()
    assert time.monotonic() - t0 < 5, "removed as soon as the lock went, not at the deadline"
