"""Repacked weights benchmark (issue 12): where a quantized model's weights live.

The CPU backend repacks Q4_0/Q4_K/IQ4_NL/MXFP4 weights (x86 AVX2) into an
interleaved copy at load; upstream keeps that copy in anonymous memory. On a
model with Qwen2.5-7B's full matrix sizes in Q4_K (synthesized, random
weights, ~3.9 GB), side by side at the same context and fill:

- **stock**: the unpatched build at its defaults (repack on, copy in private RAM);
- **ram** / **ssd**: the patched build as `diskllm run` starts it (the copy in the
  repack cache file, patches/0005), KV in private RAM or on SSD;
- **ssd-no-repack**: `--no-repack`, the other design (no copy, no repacked kernels).

Then each alone under a memory cap for server + page cache (default 2.5 GB),
where weights + KV do not fit: who starts, who answers, tok/s, bytes read per
token. The model file and repack cache are dropped from the page cache first.

    python -m bench.repack --ctx 32768 --fill 2048 --cap-gb 2.5   # 28 layers
    python -m bench.repack --ctx 65536 --fill 2048 --cap-gb 0
    python -m bench.repack --quick              # 2-layer variant, small sizes, no cap

New design vs old in one run: `--baseline-server PATH` (a build of the previous patch
series) and variants with the suffix "@baseline" run on it, e.g. `--variants ssd ssd@baseline`.

Importable: run(...) -> list[dict]; table(rows) -> Markdown.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from diskllm.bench.kv_backend import (SUFFIX, Bench, Say, _f, _mb, _ratio, bench_parser, binaries, emit,
                                      measure_interleaved, path_note, require_baseline, say_stderr, setup,
                                      variant_binary)
from diskllm.bench.machine import describe, disk_read_rates, drop_file_cache
from diskllm.core.models.repack import ensure_private_dir, repack_cache_path, repacked_bytes

VARIANTS = ("stock", "ram", "ssd", "ssd-repack-cache")
# what the ssd server's paging does under the cap: its budget off (0004's read-ahead and
# the kernel's LRU), and neither (plain page faults)
PAGING_VARIANTS = ("ssd-budget-off", "ssd-faults", "ssd-stream", "ssd-stream-whole", "ssd-stream-normal", "ssd-direct",
                   "ssd-direct-stream", "ssd-populate", "ssd-stream-populate", "ssd-willneed", "ssd-stream-willneed")
# environment of the variants that pin one way: the streamed weights' read path
# (patches/0009, DISKLLM_KV_READ) and streaming vs plain faults (patches/0010,
# DISKLLM_KV_PATH; "ssd" and "ssd-direct" let the server time both and choose)
VARIANT_ENV = {"ssd-direct": {"DISKLLM_KV_READ": "direct"},
               "ssd-stream": {"DISKLLM_KV_PATH": "stream"},
               # large weights asked for whole, as before patches/0011
               "ssd-stream-whole": {"DISKLLM_KV_PATH": "stream", "DISKLLM_KV_PROG": "off"},
               "ssd-stream-normal": {"DISKLLM_KV_PATH": "stream"},
               "ssd-direct-stream": {"DISKLLM_KV_READ": "direct", "DISKLLM_KV_PATH": "stream"},
               # streamed weights read as 2 MiB folios (patches/0015), or by MADV_WILLNEED;
               # "ssd" picks one by the working set (0016)
               "ssd-populate": {"DISKLLM_KV_READ": "populate"},
               "ssd-stream-populate": {"DISKLLM_KV_READ": "populate", "DISKLLM_KV_PATH": "stream"},
               "ssd-willneed": {"DISKLLM_KV_READ": "willneed"},
               "ssd-stream-willneed": {"DISKLLM_KV_READ": "willneed", "DISKLLM_KV_PATH": "stream"}}
CAP_BYTES = int(2.5e9)


def _flags(variant: str, cache: Path) -> tuple[str, list[str]]:
    """(backend, extra flags) of a variant."""
    if variant == "stock":
        return "stock", []
    if variant == "ssd-repack-cache":
        return "ssd", ["--repack-cache", str(cache)]
    if variant == "ssd-budget-off":
        return "ssd", ["--no-repack", "--kv-budget", "off"]
    if variant == "ssd-stream-normal":  # no --kv-advice sequential: the resident set keeps its recency
        return "ssd", ["--no-repack", "--kv-advice", "normal"]
    if variant in VARIANT_ENV:
        return "ssd", ["--no-repack"]
    if variant == "ssd-faults":
        return "ssd", ["--no-repack", "--kv-budget", "off", "--kv-prefetch", "0"]
    return variant, ["--no-repack"]  # what diskllm run passes by default (repack = "off")


def run(n_layer: int = 28, ctx: int = 32768, fill: int = 2048, quick: bool = False, *,
        cap: int | None = CAP_BYTES, variants: tuple[str, ...] = VARIANTS, threads: int | None = None,
        runs: int | None = None, n_predict: int | None = None, work_dir: Path | None = None,
        side_by_side: bool = True, ssd_extra: tuple[str, ...] = (), server: Path | None = None,
        baseline: Path | None = None, say: Say = print) -> list[dict]:
    """Rows: 'machine', 'repack-first-start', 'repack' (side by side), 'repack-cap' (each alone)."""
    from diskllm.testing.synth import synthesize_qwen7b_full
    require_baseline(baseline, variants)
    if quick:
        n_layer, ctx, fill, cap = 2, min(ctx, 4096), min(fill, 256), None
    ctxs = (ctx,)
    runs = runs or (2 if quick else 3)
    n_predict = n_predict or (8 if quick else 32)
    model = synthesize_qwen7b_full(n_layer)
    bins = binaries("stock" in variants, say, server)
    s0 = setup(model, ctxs[0], threads, work_dir, "diskllm-repack-")
    cache = repack_cache_path_for(s0.work, model, bins["patched"])
    rows: list[dict] = [{"kind": "machine", **describe(s0.work), "model": model.name, "model_bytes": s0.info.file_size,
                         "repacked_bytes": repacked_bytes(s0.info), "runs": runs, "n_predict": n_predict,
                         "kv_used": s0.info.kv_bytes_per_token() * fill,
                         "quick": quick, "binaries": {k: str(v) for k, v in bins.items()}}]

    def bench(variant: str, ctx: int, **kw: Any) -> Bench:
        s = setup(model, ctx, threads, s0.work, "")
        name, exe = variant_binary(variant, bins["patched"], baseline)
        backend, extra = _flags(name, cache)
        if backend == "ssd":
            extra = extra + list(ssd_extra)
        env = VARIANT_ENV.get(name)
        if backend == "stock":
            exe = bins["stock"]
        return Bench(backend, exe, model, ctx, fill,
                     threads=s.threads, ctx_override=s.ctx_override, n_predict=n_predict, work=s0.work, say=say,
                     extra=extra, label=variant, env=env, **kw)

    try:
        # One server writes the repack cache first, so the timed server maps it
        # (a first start repacks and writes it: that cost is reported on its own).
        if "ssd-repack-cache" in variants:
            say(f"writing the repack cache {cache.name}")
            first = bench("ssd-repack-cache", ctxs[0])
            first.start()
            rows.append({"kind": "repack-first-start", **first.finish()})
        for ctx in ctxs if side_by_side else ():
            say(f"{', '.join(variants)}: {model.name} -c {ctx}, fill {fill} (side by side, decode round-robin)")
            rows += [{"kind": "repack", **r} for r in measure_interleaved([bench(v, ctx) for v in variants], runs)]
        if cap:
            ctx = ctxs[0]
            say("disk read rates (O_DIRECT, fresh file): the paging limit's numerator")
            rows.append({"kind": "disk", **disk_read_rates(s0.work, 1024)})
            for v in variants:
                drop_file_cache(model, verify=True)
                if cache.exists():
                    drop_file_cache(cache, verify=True)
                say(f"{v} under a {cap / 1e9:.1f} GB cap (server + page cache), -c {ctx}")
                rows.append({"kind": "repack-cap", **measure_interleaved(
                    [bench(v, ctx, cap=cap, cap_fraction=round(cap / s0.info.file_size, 3))],
                    max(2, runs - 1))[0]})
    finally:
        if not work_dir:
            shutil.rmtree(s0.work, ignore_errors=True)
    return rows


def repack_cache_path_for(work: Path, model: Path, binary: Path) -> Path:
    """The cache file `diskllm run` would use, but under the benchmark's work dir."""
    from diskllm.core.paths import Home
    home = Home(work)
    ensure_private_dir(home.repack)
    return repack_cache_path(home, model, binary)


def table(rows: list[dict]) -> str:
    out = []
    m = next((r for r in rows if r["kind"] == "machine"), {})
    out.append(f"{m.get('model')} ({_mb(m.get('model_bytes'))} MB, of which {_mb(m.get('repacked_bytes'))} MB "
               f"repacked on this CPU); decode = median of {m.get('runs')} x {m.get('n_predict')} tokens")
    first = next((r for r in rows if r["kind"] == "repack-first-start"), None)
    if first and first.get("load_seconds"):
        out.append(f"First start (repack + write the cache): {first['load_seconds']:.0f} s to healthy.")
    for ctx in sorted({r["ctx"] for r in rows if r["kind"] == "repack"}):
        be = {r["variant"]: r for r in rows if r["kind"] == "repack" and r["ctx"] == ctx}
        fill = next(iter(be.values()))["fill"]
        out += ["", f"-c {ctx}, {fill} tokens filled:", "",
                "| server | start s | prefill tok/s | decode tok/s | RssAnon MB | RssFile MB | VmHWM MB | KV on disk MB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for v, r in be.items():
            if not r.get("answered"):
                out.append(f"| {v} | {r.get('error', 'failed')} |||||||")
                continue
            out.append(f"| {v} | {_f(r.get('load_seconds'), '.0f')} | {_f(r.get('prefill_tps'))} | {_f(r.get('decode_tps'), '.2f')} "
                       f"| {_mb(r.get('rss_anon'))} | {_mb(r.get('rss_file'))} | {_mb(r.get('vm_hwm'))} | {_mb(r.get('kv_disk'))} |")
        stock = be.get("stock", {})
        for v in ("ssd", "ssd-repack-cache"):
            r = be.get(v, {})
            if r.get("answered") and stock.get("answered"):
                out.append(f"| **{v}/stock** | | {_ratio(r.get('prefill_tps'), stock.get('prefill_tps'))} "
                           f"| {_ratio(r.get('decode_tps'), stock.get('decode_tps'))} "
                           f"| {_ratio(r.get('rss_anon'), stock.get('rss_anon'))} "
                           f"| {_ratio(r.get('rss_file'), stock.get('rss_file'))} "
                           f"| {_ratio(r.get('vm_hwm'), stock.get('vm_hwm'))} | |")
    caps = [r for r in rows if r["kind"] == "repack-cap"]
    if caps:
        n_runs = max((len(r.get("decode_runs") or []) for r in caps), default=0)
        disk = next((r for r in rows if r["kind"] == "disk"), None)
        seq = disk["seq_read_Bps"] if disk else None
        out += ["", f"Under a {caps[0]['cap_bytes'] / 1e9:.1f} GB cap (server + page cache), -c {caps[0]['ctx']}, "
                    f"each server alone, decode = median of {n_runs} x {m.get('n_predict')} tokens. "
                    "W = KV used + weights, B = cap - RssAnon; limit = disk sequential / (W - B) "
                    "(the uncapped decode, in the side-by-side table, is far above it):", "",
                "| server | started | answered | decode tok/s | x limit | read / token MB | / (W-B) "
                "| storage read rate MB/s | x disk sequential | cgroup peak MB | what happened |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in caps:
            what = "; ".join(x for x in (r.get("runs_cut"), r.get("error")) if x) or "answered"
            what = "; ".join(x for x in (what, path_note(r)) if x)
            if r.get("oom_kills"):
                what = f"OOM-killed in the cgroup: {what}"
            stream = _streamed_part(m, r)
            per_tok, rate = r.get("read_bytes_per_token"), r.get("kv_read_Bps")
            lim = seq / stream if seq and stream else None
            out.append(f"| {r['variant']} | {'yes' if r['started'] else 'no'} | {'yes' if r['answered'] else 'no'} "
                       f"| {_f(r.get('decode_tps'), '.2f')} "
                       f"| {_f(r['decode_tps'] / lim if lim and r.get('decode_tps') else None, '.2f')} "
                       f"| {_mb(per_tok)} | {_f(per_tok / stream if per_tok and stream else None, '.2f')} "
                       f"| {_mb(rate)} | {_f(rate / seq if rate and seq else None, '.2f')} "
                       f"| {_mb(r.get('cgroup_peak'))} | {what.replace('|', '/')[:120]} |")
        if disk:
            out += ["", f"Disk, same run ({disk['test_file_mib']} MiB fresh file, O_DIRECT): sequential 1 MiB reads "
                        f"{seq / 1e6:.0f} MB/s"]
    return "\n".join(out)


def _streamed_part(m: dict, r: dict) -> float | None:
    """W - B of a capped row: weights + KV used, minus the cap's room once private memory is out."""
    if not (m.get("model_bytes") and r.get("rss_anon") and r.get("cap_bytes")):
        return None
    part = m["model_bytes"] + m.get("kv_used", 0) - (r["cap_bytes"] - r["rss_anon"])
    return part if part > 0 else None


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("bench.repack", __doc__, ctx=32768, fill=2048, model=None)
    ap.add_argument("--layers", type=int, default=28, help="28 = the full model (~3.9 GB); 2 for a quick look")
    ap.add_argument("--cap-gb", type=float, default=CAP_BYTES / 1e9, help="0: no capped runs")
    names = VARIANTS + PAGING_VARIANTS
    ap.add_argument("--variants", nargs="+", choices=names + tuple(v + SUFFIX for v in names if v != "stock"),
                    default=list(VARIANTS), metavar="VARIANT",
                    help=f"of {', '.join(names)}; NAME{SUFFIX} runs NAME on --baseline-server")
    ap.add_argument("--cap-only", action="store_true", help="only the capped runs")
    ap.add_argument("--server", type=Path, help="patched llama-server instead of the cached build")
    ap.add_argument("--baseline-server", type=Path, help=f"llama-server for the {SUFFIX} variants (the old design)")
    ap.add_argument("ssd_extra", nargs="*", help="after --: more llama-server flags for the ssd servers")
    a = ap.parse_args(argv)
    rows = run(a.layers, a.ctx, a.fill, a.quick, cap=int(a.cap_gb * 1e9) or None,
               variants=tuple(a.variants), threads=a.threads, runs=a.runs, n_predict=a.n_predict,
               work_dir=a.work_dir, side_by_side=not a.cap_only, ssd_extra=tuple(a.ssd_extra), server=a.server,
               baseline=a.baseline_server, say=say_stderr)
    return emit(rows, a.json, table(rows))


if __name__ == "__main__":
    sys.exit(main())
