"""GGUF header reading on the real test models, and clear errors for bad files."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from diskllm.core.models.gguf import GGUFError, read_gguf_info


def test_smollm2(smollm2_path: Path):
    t = time.monotonic()
    info = read_gguf_info(smollm2_path)
    assert time.monotonic() - t < 2.0
    assert info.arch == "llama"
    assert info.quant == "Q4_1"
    assert info.n_layer == 30 and info.n_head == 9 and info.n_head_kv == 3
    assert info.head_dim_k == info.head_dim_v == 64  # n_embd 576 / 9 heads
    assert info.context_length == 8192
    assert info.sliding_window is None and not info.is_swa
    assert info.has_chat_template
    assert info.kv_bytes_per_token() == 23_040  # 30 * 3 * 64 * 2 (K,V) * 2 B
    assert info.kv_bytes(4096) == 23_040 * 4096
    assert 130e6 < info.n_params < 140e6
    assert info.file_size == smollm2_path.stat().st_size


def test_n_params_matches_gguf_reader(smollm2_path: Path):
    from gguf import GGUFReader
    reader = GGUFReader(smollm2_path)
    assert read_gguf_info(smollm2_path).n_params == sum(int(t.n_elements) for t in reader.tensors)


def test_gemma3_iswa(gemma3_path: Path):
    info = read_gguf_info(gemma3_path)
    assert info.arch == "gemma3" and info.quant == "Q4_K_M"
    assert info.n_layer == 18 and info.n_head_kv == 1
    assert info.head_dim_k == info.head_dim_v == 256
    assert info.sliding_window == 512 and info.context_length == 32768
    # llama.cpp's gemma3 pattern: every 6th layer is full attention.
    assert info.swa_layers.count(False) == 3 and info.swa_layers.count(True) == 15
    per_layer = 1 * 256 * 2 * 2
    assert info.kv_bytes_per_token() == 18 * per_layer
    swa, full = info.kv_bytes_split(4096)
    assert swa == 15 * per_layer * 512 and full == 3 * per_layer * 4096
    assert info.kv_bytes(256) == 18 * per_layer * 256  # below the window all layers grow


def test_missing(tmp_path: Path):
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf_info(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"hello world, not a model\n" * 10, b"GGUG" + b"\0" * 100])
def test_not_gguf(tmp_path: Path, content: bytes):
    p = tmp_path / "x.gguf"
    p.write_bytes(content)
    with pytest.raises(GGUFError, match="not a GGUF"):
        read_gguf_info(p)


def test_directory(tmp_path: Path):
    with pytest.raises(GGUFError, match="directory"):
        read_gguf_info(tmp_path)


@pytest.mark.parametrize("keep", [10, 30, 5000, 1_000_000])
def test_truncated(tmp_path: Path, smollm2_path: Path, keep: int):
    p = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as src:
        p.write_bytes(src.read(keep))
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf_info(p)


def test_truncated_by_one_byte(tmp_path: Path, smollm2_path: Path):
    p = tmp_path / "cut.gguf"
    shutil.copyfile(smollm2_path, p)
    with open(p, "r+b") as f:
        f.truncate(smollm2_path.stat().st_size - 1)
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf_info(p)


def test_errors_are_one_line(tmp_path: Path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(GGUFError) as e:
        read_gguf_info(p)
    assert "\n" not in str(e.value)
