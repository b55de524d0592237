"""The request checks and server flags of the daemon's embeddings (the live route is in
tests/live/test_api.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from diskllm.core.api.embed import embed_inputs, embed_server_args
from diskllm.core.api.translate import BadRequest


def test_inputs_string_or_list():
    assert embed_inputs({"input": "a"}, legacy=False) == ["a"]
    assert embed_inputs({"input": ["a", "b"]}, legacy=False) == ["a", "b"]
    assert embed_inputs({"prompt": "a"}, legacy=True) == ["a"]


@pytest.mark.parametrize("body", [{}, {"input": []}, {"input": 3}, {"input": ["a", 1]}])
def test_bad_inputs_are_one_line_400s(body):
    with pytest.raises(BadRequest, match="input must be"):
        embed_inputs(body, legacy=False)


def test_chat_model_is_mean_pooled_with_a_batch_of_the_context(smollm2_path: Path):
    assert embed_server_args(str(smollm2_path), 1024) == ["--embeddings", "-b", "1024", "-ub", "1024",
                                                          "--pooling", "mean"]


def test_unreadable_model_still_gets_flags(tmp_path: Path):
    assert "--embeddings" in embed_server_args(str(tmp_path / "missing.gguf"), 512)
