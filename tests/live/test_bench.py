"""`python -m bench --quick`: the whole benchmark suite runs end to end on real servers and
renders the benchmarks page (a smoke run with tiny sizes; the figures in docs/ come from a
full run). Builds the stock llama-server too, into the shared build cache."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from diskllm.bench.report import render
from diskllm.bench.suite import Results

REPO = Path(__file__).resolve().parents[2]


def test_quick_suite_runs_and_renders(tmp_path: Path, server_binary: Path, build_cache: Path):
    out, raw = tmp_path / "benchmarks.md", tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out), "--json", str(raw)],
                       cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = Results.from_json(raw.read_text())
    assert {run["config"]["section"] for run in res.runs} == {"backends", "quant", "caps", "paging", "repack", "rpc"}
    for run in res.runs:
        assert not [row for row in run["rows"] if row.get("kind") == "error"], run

    backends = next(run for run in res.runs if run["config"]["section"] == "backends")
    be = {row["backend"]: row for row in backends["rows"] if row.get("kind") == "backend"}
    assert set(be) == {"stock", "ram", "ssd"} and all(row["answered"] for row in be.values()), be
    assert be["ssd"]["rss_anon"] < be["stock"]["rss_anon"]

    # under 25% of the KV size the stock server cannot even start; the ssd one answers
    caps = next(run for run in res.runs if run["config"]["section"] == "caps")
    capped = {row["backend"]: row for row in caps["rows"] if row.get("kind") == "cap"}
    if "skipped" not in str(capped["ssd"].get("error", "")):
        assert capped["ssd"]["answered"] and not capped["stock"]["answered"], capped

    # the 2-layer Q4_K 7B: upstream's repacked copy is private RAM, ours stays file-backed
    repack = next(run for run in res.runs if run["config"]["section"] == "repack")
    rp = {row["variant"]: row for row in repack["rows"] if row.get("kind") == "repack"}
    assert all(row["answered"] for row in rp.values()), rp
    assert rp["ssd-repack-cache"]["rss_anon"] < rp["stock"]["rss_anon"] / 2, rp

    # two loopback workers: the split server answers, keeps part of the KV on the main host's
    # SSD file, and its workers exchange bytes with it for every token
    rpc = next(run for run in res.runs if run["config"]["section"] == "rpc")
    rr = {row["variant"]: row for row in rpc["rows"] if row.get("kind") == "rpc"}
    assert rr["single"]["answered"] and rr["2 workers"]["answered"], rr
    assert 0 < rr["2 workers"]["kv_disk"] < rr["single"]["kv_disk"], rr
    assert rr["2 workers"]["wire_bytes_per_token"] > 1000 and rr["2 workers"]["replies_per_token"] >= 2, rr

    paging = next(run for run in res.runs if run["config"]["section"] == "paging")
    assert any(row.get("kind") == "disk" and row["seq_read_Bps"] > 0 for row in paging["rows"])
    assert res.sessions and res.sessions[0]["reused"] > 0
    assert res.pull and res.pull[0].get("ratio", 0) > 0

    text = out.read_text()
    for heading in ("## Targets", "## Machine", "## KV backend", "## Quantized KV cache", "## Memory caps",
                    "## Paging when the working set does not fit", "## RPC workers: one host vs two loopback workers",
                    "## Session restore", "## Pull throughput"):
        assert heading in text
    assert "Failed:" not in text and "python -m bench.kv_backend --model smollm2" in text
    # the page is a pure function of the saved rows
    assert render(Results.from_json(raw.read_text())) == text
