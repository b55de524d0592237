"""Synthesized test models: geometry from the header, determinism, atomic cache."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from diskllm.core.models.gguf import read_gguf_info
from diskllm.testing.synth import (
    HYBRID_LAYOUT, QWEN7B_KV_BYTES_PER_TOKEN, synthesize_hybrid, synthesize_qwen7b_geometry,
)


@pytest.fixture(scope="session")
def qwen7b_geom_path() -> Path:
    return synthesize_qwen7b_geometry()


@pytest.fixture(scope="session")
def hybrid_path() -> Path:
    return synthesize_hybrid()


def test_qwen7b_geometry_header(qwen7b_geom_path: Path) -> None:
    info = read_gguf_info(qwen7b_geom_path)
    assert info.arch == "llama"
    assert info.n_layer == 28 and info.n_head == 4 and info.n_head_kv == 4
    assert info.head_dim_k == info.head_dim_v == 128
    assert info.context_length == 131072
    assert info.kv_bytes_per_token() == QWEN7B_KV_BYTES_PER_TOKEN == 57_344
    assert info.kv_bytes_per_token() * 65536 == 3_758_096_384  # 3.5 GiB at 64K, as the real 7B
    assert 120e6 < info.file_size < 150e6
    assert info.has_chat_template


def test_hybrid_header(hybrid_path: Path) -> None:
    info = read_gguf_info(hybrid_path)
    assert info.arch == "lfm2"
    assert info.n_layer == len(HYBRID_LAYOUT)
    assert info.n_head_kv == [2 if c == "a" else 0 for c in HYBRID_LAYOUT]
    assert 0 in info.n_head_kv and any(info.n_head_kv)  # conv layers and attention layers
    assert info.kv_bytes_per_token() > 0
    assert info.file_size < 50e6


def test_cached_and_deterministic(tmp_path: Path, hybrid_path: Path) -> None:
    assert synthesize_hybrid() == hybrid_path  # second call: the cached file
    fresh = synthesize_hybrid(tmp_path)
    assert fresh.parent == tmp_path and fresh.name == hybrid_path.name

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert sha(fresh) == sha(hybrid_path)
    assert [p.name for p in tmp_path.iterdir()] == [fresh.name]  # no temp file left behind
