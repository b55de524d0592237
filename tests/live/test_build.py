"""The pinned llama-server build: cached binary, cache key, patch series, clear errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from diskllm.core.build import BuildSpec, binary_path, cache_key, ensure_server
from diskllm.core.errors import DiskLLMError
from diskllm.core.paths import Home
from diskllm.core.pin import load_pin, patch_files, patches_dir, pin_file


def test_pin_is_package_data():
    assert pin_file().is_file()
    pin = load_pin()
    assert pin.package == "llama-cpp-python" and len(pin.sha256) == 64
    assert "-DLLAMA_BUILD_TESTS=OFF" in pin.cmake_flags


def test_machine_flags_appended_per_architecture():
    # ggml's AMX kernels crash at this pin on some x86_64 CPUs: the x86_64 build turns them off
    x86, arm = load_pin(machine="x86_64"), load_pin(machine="aarch64")
    assert x86.cmake_flags[:len(arm.cmake_flags)] == arm.cmake_flags
    assert any("-mno-amx-int8" in f for f in x86.cmake_flags)
    assert not any("amx" in f for f in arm.cmake_flags)
    assert load_pin(machine="AMD64").cmake_flags == x86.cmake_flags
    assert cache_key(BuildSpec(pin=x86)) != cache_key(BuildSpec(pin=arm))


def test_binary_built_and_cached(server_binary: Path, build_home: Home, build_cache: Path):
    assert server_binary.is_file() and os.access(server_binary, os.X_OK)
    assert server_binary.parent.parent == build_cache
    assert server_binary == binary_path(build_home, BuildSpec())
    meta = json.loads((server_binary.parent / "build.json").read_text())
    assert meta["key"] == cache_key(BuildSpec())
    assert [p["name"] for p in meta["patches"]] == [p.name for p in patch_files()]
    r = subprocess.run([server_binary, "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0


def test_help_lists_ssd_flags_once_patched(server_binary: Path):
    help_text = subprocess.run([server_binary, "--help"], capture_output=True, text=True, timeout=30)
    has_flag = "--kv-backend" in help_text.stdout + help_text.stderr
    assert has_flag == bool(patch_files()), "SSD flags present iff patches/ has patches"


def test_build_cli_reuses_cache(home: Home, server_binary: Path):
    r = run_cli("build")
    assert r.rc == 0, r.err
    assert r.out.strip().splitlines()[-1] == str(server_binary)


def test_cache_key_tracks_patches(tmp_path: Path):
    pdir = tmp_path / "patches"
    if patches_dir().is_dir():
        shutil.copytree(patches_dir(), pdir)
    else:
        pdir.mkdir()
    base = cache_key(BuildSpec(patches=pdir))
    assert base == cache_key(BuildSpec())  # a copy of the series = the same key
    extra = pdir / "zz-extra.patch"
    extra.write_text("--- a/x\n+++ b/x\n")
    k1 = cache_key(BuildSpec(patches=pdir))
    extra.write_text("--- a/x\n+++ b/x\n@@ changed @@\n")
    k2 = cache_key(BuildSpec(patches=pdir))
    extra.rename(pdir / "zz-renamed.patch")
    k3 = cache_key(BuildSpec(patches=pdir))
    assert len({base, k1, k2, k3}) == 4
    # The stock build ignores patches entirely.
    assert cache_key(BuildSpec(stock=True, patches=pdir)) == cache_key(BuildSpec(stock=True))


def _bogus_series(tmp_path: Path) -> Path:
    pdir = tmp_path / "bogus-patches"
    pdir.mkdir()
    (pdir / "0001-does-not-apply.patch").write_text(
        "--- a/README.md\n+++ b/README.md\n@@ -1,3 +1,3 @@\n-no such line\n+new line\n context\n context\n"
    )
    return pdir


async def test_missing_tool_is_named(home: Home, tmp_path: Path, monkeypatch):
    spec = BuildSpec(patches=_bogus_series(tmp_path))  # uncached key: would build
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DiskLLMError, match="'cmake' not found"):
        await ensure_server(home, spec=spec, use_override=False)


async def test_failing_patch_is_a_clear_error(home: Home, build_home: Home, tmp_path: Path):
    # Reuse the sdist the session build downloaded (same sha256 check applies).
    sdist = build_home.src / "sdist" / load_pin().sdist_name
    if sdist.is_file():
        (home.src / "sdist").mkdir(parents=True)
        os.link(sdist, home.src / "sdist" / sdist.name)
    spec = BuildSpec(patches=_bogus_series(tmp_path))
    with pytest.raises(DiskLLMError) as e:
        await ensure_server(home, spec=spec, use_override=False)
    msg = str(e.value)
    assert "0001-does-not-apply.patch does not apply" in msg and "log:" in msg and "\n" not in msg
    log = Path(msg.split("log: ")[1].rstrip(")"))
    assert log.is_file() and "0001-does-not-apply.patch" in log.read_text()
    assert not binary_path(home, spec).exists()


def test_override_bypasses_build(home: Home, tmp_path: Path, monkeypatch):
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\necho fake\n")
    fake.chmod(0o755)
    monkeypatch.setenv("DISKLLM_LLAMA_SERVER", str(fake))
    import asyncio
    assert asyncio.run(ensure_server(home)) == fake
    monkeypatch.setenv("DISKLLM_LLAMA_SERVER", str(tmp_path / "missing"))
    with pytest.raises(DiskLLMError, match="not an executable"):
        asyncio.run(ensure_server(home))
