"""Cold starts under a cap: what the eviction margin learns before decoding (issue 14, patches 0017, 0022).

A patched ssd server started with the model's pages dropped from the page cache,
inside a memory cgroup of its private memory + F x (KV at the fill + weights), reads
the resident set in during its warm-up and its first prompt while the page cache
still holds what the model loader read. What reclaim takes of the resident set then
must not widen the eviction margin (patches/0010): a margin set there is streamed
again every token of the reply. Each run starts one server that way, sends --fill
tokens of real text and decodes --n-predict tokens, then reads the server's log and
its paging stats file:

- whether the warm-up (before "model loaded") widened the margin, and how many
  graphs lost part of the resident set in all;
- the margin and the resident set after the reply;
- decode tok/s and storage bytes read per decode token.

The private memory is read once from an uncapped ssd server after the same prompt
(RssAnon + 8 MiB, as tests/live/test_kv_paging.py does). New vs old design in one
run, starts alternating: `--variants ssd ssd@baseline --baseline-server OLD`.

--runs is the number of starts per variant (4; 1 with --quick).

    python -m bench.cold_start --fill 2600 --runs 8 --n-predict 32 --server NEW --variants ssd ssd@baseline --baseline-server OLD

Importable: run(...) -> list[dict]; table(rows) -> Markdown.
"""
from __future__ import annotations

import re
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from diskllm.bench.cgroup import MemoryCgroup
from diskllm.bench.kv_backend import (SUFFIX, Say, Server, _free_port, _post, bench_parser, binaries, emit,
                                      real_prompt, require_baseline, say_stderr, server_argv, setup, start,
                                      variant_binary)
from diskllm.bench.machine import describe, drop_file_cache
from diskllm.core.server import memory_of, paging_stats

SLACK = 8 << 20  # on top of private memory: it still grows a little (compute buffers, slots)
RECLAIM = re.compile(r"reclaim took ([\d.]+) MiB")
MEDIANS = ("margin", "resident", "decode_tps", "read_per_token")  # per start, summarized as medians


def parse_log(text: str) -> dict[str, Any]:
    """What the server's log says of its margin: losses before "model loaded" and in all (MiB)."""
    cut = text.find("model loaded")
    warm = text if cut < 0 else text[:cut]
    return {"warm_up_losses": [float(x) for x in RECLAIM.findall(warm)],
            "losses": [float(x) for x in RECLAIM.findall(text)]}


def run(model: str | Path = "smollm2", ctx: int = 4096, fill: int = 2600, *, fraction: float = 1 / 3,
        variants: tuple[str, ...] | list[str] = ("ssd",), runs: int = 4, n_predict: int = 16,
        threads: int | None = None, server: Path | None = None, baseline: Path | None = None,
        kv_window: int = 256, extra: list[str] | None = None, work_dir: Path | None = None,
        say: Say = print) -> list[dict]:
    """Rows: one 'machine', then one 'cold' row per start."""
    require_baseline(baseline, variants)
    s = setup(model, ctx, threads, work_dir, "diskllm-cold-")
    binary = binaries(False, say, server, None)["patched"]
    kv_used = s.info.kv_bytes_per_token() * fill
    rows: list[dict] = [{"kind": "machine", **describe(s.work), "model": s.model.name, "model_bytes": s.info.file_size,
                         "kv_used": kv_used, "fill": fill, "n_predict": n_predict, "binary": str(binary)}]

    def launch(exe: Path, name: str, cg: MemoryCgroup | None) -> Server:
        kv_dir = s.work / f"kv-{name}"
        kv_dir.mkdir(exist_ok=True)
        argv = server_argv(exe, "ssd", s.model, ctx, s.threads, _free_port(), kv_dir, s.ctx_override,
                           list(extra or []), kv_window)
        srv, why = start(argv, s.work / f"{name}.log", kv_dir, cg, 300)
        if why:
            srv.stop()
            raise RuntimeError(f"{name}: {why}: {srv.log_tail()}")
        return srv

    try:
        probe = launch(binary, "uncapped", None)
        try:
            prompt = real_prompt(probe.url, fill)
            _post(probe.url + "/completion", {"prompt": prompt, "n_predict": 1, "temperature": 0}, 600)
            private = memory_of(probe.proc.pid).rss_anon + SLACK
        finally:
            probe.stop()
        cap = int(private + fraction * (kv_used + s.info.file_size))
        say(f"cap {cap / 2**20:.0f} MiB = RssAnon {private / 2**20:.0f} + {fraction:.2g} x "
            f"(KV {kv_used / 2**20:.0f} + weights {s.info.file_size / 2**20:.0f}) MiB")
        for i in range(runs):
            for v in (variants if i % 2 == 0 else list(variants)[::-1]):  # alternate who goes first
                _, exe = variant_binary(v, binary, baseline)
                drop_file_cache(s.model, verify=True)
                cg = MemoryCgroup(cap)
                row: dict[str, Any] = {"kind": "cold", "variant": v, "run": i, "cap": cap, "private": private}
                try:
                    srv = launch(exe, f"{v}-{i}", cg)
                    try:
                        r = _post(srv.url + "/completion", {"prompt": prompt, "n_predict": n_predict,
                                                            "temperature": 0, "ignore_eos": True}, 900)
                        st = paging_stats(srv.kv_dir, srv.proc.pid) if srv.kv_dir else None
                        row.update(parse_log(srv.log.read_text(errors="replace")))
                        row.update(decode_tps=r["timings"]["predicted_per_second"], oom_kills=cg.oom_kills())
                        if st:
                            row.update(margin=st.margin, resident=st.resident, read_per_token=st.read_per_token)
                    finally:
                        srv.stop()
                except Exception as e:  # noqa: BLE001 - a benchmark row reports what went wrong
                    row["error"] = str(e)
                finally:
                    cg.close()
                say(f"  {v} start {i + 1}: " + ", ".join(f"{k} {row.get(k)}" for k in (
                    "warm_up_losses", "losses", "margin", "decode_tps", "error") if row.get(k) is not None))
                rows.append(row)
    finally:
        if not work_dir:
            shutil.rmtree(s.work, ignore_errors=True)
    return rows


def summarize(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per variant, over its starts that answered: counts and medians."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") != "cold":
            continue
        v = out.setdefault(r["variant"], {"starts": 0, "failed": 0, "warm_up_margins": 0, "any_margin": 0,
                                          "_vals": {f: [] for f in MEDIANS}})
        v["starts"] += 1
        if "error" in r:
            v["failed"] += 1
            continue
        v["warm_up_margins"] += bool(r.get("warm_up_losses"))
        v["any_margin"] += bool(r.get("losses"))
        for f in MEDIANS:
            if r.get(f) is not None:
                v["_vals"][f].append(r[f])
    for v in out.values():
        for f, vals in v.pop("_vals").items():
            v[f] = statistics.median(vals) if vals else None
    return out


def _mib(v: Any) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def table(rows: list[dict]) -> str:
    m = next((r for r in rows if r.get("kind") == "machine"), {})
    cold = next((r for r in rows if r.get("kind") == "cold"), {})
    head = (f"{m.get('model', '?')}, {m.get('fill', '?')} tokens then {m.get('n_predict', '?')} decoded, cold under "
            f"{_mib(cold.get('cap'))} MiB (private {_mib(cold.get('private'))}); medians over the starts that answered\n\n")
    lines = ["| variant | starts | warm-up widened the margin | any graph widened it | margin after, MiB "
             "| resident after, MiB | decode tok/s | MB read per token |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in summarize(rows).items():
        tps = "-" if v["decode_tps"] is None else f"{v['decode_tps']:.2f}"
        rpt = "-" if v["read_per_token"] is None else f"{v['read_per_token'] / 1e6:.0f}"
        failed = f" ({v['failed']} failed)" if v["failed"] else ""
        lines.append(f"| {name} | {v['starts']}{failed} | {v['warm_up_margins']} | {v['any_margin']} | "
                     f"{_mib(v['margin'])} | {_mib(v['resident'])} | {tps} | {rpt} |")
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("bench.cold_start", __doc__, ctx=4096, fill=2600)
    ap.add_argument("--fraction", type=float, default=1 / 3, help="the cap's room for KV + weights (default 1/3)")
    ap.add_argument("--variants", nargs="+", default=["ssd"],
                    help=f"ssd, and ssd{SUFFIX} for the same on --baseline-server")
    ap.add_argument("--baseline-server", type=Path, help=f"llama-server for the {SUFFIX} variants (the old design)")
    ap.add_argument("--server", type=Path, help="patched llama-server instead of the cached build")
    ap.add_argument("extra", nargs="*", help="after --: extra llama-server flags for every server")
    a = ap.parse_args(argv)
    bad = [v for v in a.variants if v.removesuffix(SUFFIX) != "ssd"]
    if bad:
        ap.error(f"unknown variant {bad[0]!r} (ssd or ssd{SUFFIX})")
    fill = min(a.fill, 1000) if a.quick else a.fill
    rows = run(a.model, a.ctx, fill, fraction=a.fraction, variants=a.variants, runs=a.runs or (1 if a.quick else 4),
               n_predict=a.n_predict or (8 if a.quick else 16), threads=a.threads, server=a.server, baseline=a.baseline_server,
               extra=a.extra, work_dir=a.work_dir, say=say_stderr)
    return emit(rows, a.json, table(rows))


if __name__ == "__main__":
    sys.exit(main())
