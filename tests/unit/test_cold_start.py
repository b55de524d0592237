"""bench.cold_start's reading of a server log and its summary (the starts themselves need a
capped server). The first four log lines are from the CI run where the warm-up widened
the margin; the "model loaded" line and the later loss are added in the same format."""
from diskllm.bench.cold_start import parse_log, summarize, table

LOG = """\
0.00.445.816 W kv-budget: auto: 58.2 MiB for KV + weights now (cgroup memory.limit_in_bytes)
0.00.452.101 W kv-prefetch: pages are coming from storage (the KV cache and weights do not all fit in RAM): reading ahead of compute
0.00.673.642 W kv-budget: reclaim took 4.9 MiB of the resident set during a graph: 12.9 MiB more kept free (margin now 12.9 MiB)
0.00.674.441 I srv    load_model: initializing, n_slots = 1, n_ctx_slot = 4096, kv_unified = 'false'
0.00.690.000 I srv  llama_server: model loaded
0.05.100.000 W kv-budget: reclaim took 6.4 MiB of the resident set during a graph: 14.4 MiB more kept free (margin now 27.3 MiB)
"""


def test_losses_before_and_after_the_model_is_loaded():
    assert parse_log(LOG) == {"warm_up_losses": [4.9], "losses": [4.9, 6.4]}
    after = LOG[LOG.index("0.00.674"):]
    assert parse_log(after) == {"warm_up_losses": [], "losses": [6.4]}


def test_summary_counts_starts_and_takes_medians_over_those_that_answered():
    mib = 1 << 20
    rows = [{"kind": "machine", "model": "m.gguf", "fill": 2600, "n_predict": 32},
            {"kind": "cold", "variant": "ssd", "cap": 88 * mib, "private": 38 * mib, "warm_up_losses": [],
             "losses": [], "margin": 0, "resident": 41 * mib, "decode_tps": 5.0, "read_per_token": 130e6},
            {"kind": "cold", "variant": "ssd", "warm_up_losses": [4.9], "losses": [4.9], "margin": 13 * mib,
             "resident": 27 * mib, "decode_tps": 4.0, "read_per_token": 150e6},
            {"kind": "cold", "variant": "ssd", "warm_up_losses": [], "losses": [6.4], "margin": 14 * mib,
             "resident": 25 * mib, "decode_tps": 3.0, "read_per_token": 160e6},
            {"kind": "cold", "variant": "ssd@baseline", "error": "exited with signal SIGKILL"}]
    s = summarize(rows)
    assert s["ssd"] == {"starts": 3, "failed": 0, "warm_up_margins": 1, "any_margin": 2, "margin": 13 * mib,
                        "resident": 27 * mib, "decode_tps": 4.0, "read_per_token": 150e6}
    assert s["ssd@baseline"]["failed"] == 1 and s["ssd@baseline"]["margin"] is None
    text = table(rows)
    assert "| ssd | 3 | 1 | 2 | 13 | 27 | 4.00 | 150 |" in text
    assert "| ssd@baseline | 1 (1 failed) | 0 | 0 | - | - | - | - |" in text
    assert "cold under 88 MiB (private 38)" in text
