"""What the CPU backend repacks and where DiskLLM says the weights live (issue 12)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from diskllm.core.config import load_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.models.repack import repacked_bytes
from diskllm.core.models.show import describe, estimate_memory
from diskllm.core.paths import Home
from diskllm.core.server import ServerOptions, build_argv

AVX2 = "x86_64:avx avx2 fma f16c"


def test_gemma3_q4_k_m_repacked_bytes_match_the_servers_buffer(gemma3_path: Path):
    # llama-server -lv 4 on this model: "CPU_REPACK model buffer size = 12.66 MiB"
    assert repacked_bytes(read_gguf_info(gemma3_path), AVX2) / 2**20 == pytest.approx(12.66, abs=0.01)


def test_q4_1_is_not_repacked(smollm2_path: Path):
    assert repacked_bytes(read_gguf_info(smollm2_path), AVX2) == 0


def test_no_repacking_without_the_cpu_features(gemma3_path: Path):
    assert repacked_bytes(read_gguf_info(gemma3_path), "x86_64:sse4_2") == 0


def test_estimates_put_the_repacked_copy_where_the_mode_says(gemma3_path: Path):
    info = read_gguf_info(gemma3_path)
    copy = repacked_bytes(info)
    file_mode, ram_mode = estimate_memory(info, 4096, repack="file"), estimate_memory(info, 4096, repack="ram")
    assert file_mode.ssd_private == 0 and file_mode.ram_private == file_mode.kv
    assert ram_mode.ssd_private == copy and ram_mode.ram_private == ram_mode.kv + copy
    rows = dict(describe(info, 4096, repack="ram"))
    assert "PRIVATE RAM" in rows["weights"] and "repacked weights" in rows["ssd backend"]
    if copy:  # on a CPU whose backend repacks Q4_K
        assert "repack cache (file-backed)" in dict(describe(info, 4096, repack="file"))["weights"]
        assert "nothing private" in dict(describe(info, 4096))["weights"]  # the default: off


def test_show_reports_the_repack_cache(home: Home, gemma3_path: Path):
    r = run_cli("show", str(gemma3_path))
    assert r.rc == 0, r.err
    assert "weights" in r.out and "mmap'd (file-backed)" in r.out


def test_repack_setting_reaches_the_server_flags(home: Home, tmp_path: Path, gemma3_path: Path):
    binary = tmp_path / "llama-server"  # no --help: knows neither --kv-backend nor --repack-cache
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    def argv(**kw) -> list[str]:
        return build_argv(home, ServerOptions(model_path=gemma3_path, kv_backend="ram", **kw), binary)
    assert "--no-repack" in argv()                    # the default
    assert "--no-repack" in argv(repack="file")       # file mode on a binary without the cache
    assert "--no-repack" in argv(repack="off")
    assert not {"--no-repack", "--repack-cache"} & set(argv(repack="ram"))
    assert argv(extra_args=["--repack"]).count("--no-repack") == 0  # the user's own flag wins


def test_bad_repack_setting_is_one_line(home: Home):
    home.ensure()
    home.config_file.write_text('repack = "swap"\n')
    with pytest.raises(DiskLLMError, match="'repack' must be one of file, off, ram"):
        load_config(home)
