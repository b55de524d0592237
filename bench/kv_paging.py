"""KV paging benchmark (issues 8 and 14): page faults vs read-ahead vs the budget under memory caps.

One model and fill, in one go:
1. without a cap, patched `ram` beside patched `ssd` with the prefetcher off
   (`--kv-prefetch 0`) and on (the default): the prefetcher must cost nothing
   while everything is resident; the ssd server's private memory (RssAnon) is read
   here;
2. under caps of F x (KV used + weights) on top of that private memory (a child
   memory cgroup of RssAnon + F x (KV bytes at the fill + model file)), each
   variant alone: decode tok/s, bytes read from storage per token
   (/proc/PID/io read_bytes), the storage read rate, and the disk's own
   sequential O_DIRECT read rate measured in the same run.

Variants (issue 14): "faults" (no read-ahead), "prefetch" (patch 0004's read-ahead,
residency left to the kernel's LRU: `--kv-budget off`), "budget-stream" (patch 0006:
a resident set that fits the budget, the rest streamed with drop-behind) and
"budget" (the default: 0006, or plain faults where the server timed them faster,
patch 0010).
Against the physical limit: W = KV used + weights, B = cap - private memory (the
cap's room for KV + weights); "x limit" = decode / min(disk rate / (W - B), the same
variant's decode without a cap); "/ (W-B)" = bytes read per token over W - B.

New design vs old, side by side in one run: `--baseline-server PATH` (e.g. a build of
the previous patch series) and variants with the suffix "@baseline" run on it, e.g.
`--variants budget budget@baseline`.

Absolute caps (`--caps-mib 2500`) instead of fractions are for a model whose weights
alone exceed the room (the full-size 7B: `--model qwen7b-full --caps-mib 2500`, a
3.9 GB synthesis).

The model file's pages are dropped from the page cache before every capped
server, so its weights are read by (and charged to) the capped server.

    python -m bench.kv_paging --model smollm2 --ctx 8192 --fill 7000
    python -m bench.kv_paging --quick

Importable: run(...) -> list[dict]; table(rows) -> Markdown.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from diskllm.bench.kv_backend import (KV_WINDOW, SUFFIX, Bench, Say, bench_parser, binaries, emit, kv_type_bytes,
                                      measure_interleaved, path_note, require_baseline, say_stderr, setup,
                                      variant_binary)
from diskllm.bench.machine import describe, disk_read_rates, drop_file_cache

# name -> (extra llama-server flags, environment). "prefetch" is what `diskllm run` does
# (--kv-prefetch 8 --kv-evict auto --kv-advice auto); the others isolate one choice.
OFF = ["--kv-budget", "off"]
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "faults": (["--kv-prefetch", "0"], {}),
    "prefetch": (OFF, {}),
    "prefetch-cold": (OFF + ["--kv-evict", "cold"], {}),
    "prefetch-none": (OFF + ["--kv-evict", "none"], {}),
    "prefetch-normal": (OFF + ["--kv-advice", "normal"], {}),
    "prefetch-16": (OFF + ["--kv-prefetch", "16"], {}),
    "prefetch-32": (OFF + ["--kv-prefetch", "32"], {}),
    "prefetch-4": (OFF + ["--kv-prefetch", "4"], {}),
    # the read-ahead machinery switched on although nothing is paged: what it costs
    "prefetch-forced": (OFF, {"DISKLLM_KV_PREFETCH_FORCE": "1"}),
    # the default: budget, resident set, drop-behind (patch 0006), or plain faults where
    # the server timed them faster (patch 0010)
    "budget": ([], {}),
    # patch 0006 alone: always streaming
    "budget-stream": ([], {"DISKLLM_KV_PATH": "stream"}),
    # streaming with large weights asked for whole, as before patch 0011 (which follows
    # compute through them)
    "budget-stream-whole": ([], {"DISKLLM_KV_PATH": "stream", "DISKLLM_KV_PROG": "off"}),
    "budget-4": (["--kv-prefetch", "4"], {}),
    "budget-16": (["--kv-prefetch", "16"], {}),
    "budget-32": (["--kv-prefetch", "32"], {}),
    "budget-64": (["--kv-prefetch", "64"], {}),
    "budget-normal": (["--kv-advice", "normal"], {}),
    "budget-random": (["--kv-advice", "random"], {}),
    # what the default advice (auto: random with a budget) replaced in patch 0013
    "budget-sequential": (["--kv-advice", "sequential"], {}),
    "budget-forced": ([], {"DISKLLM_KV_PREFETCH_FORCE": "1"}),
    # the streamed part read with blocking pread()s through the page cache instead of
    # MADV_WILLNEED (measured slower)
    "budget-pread": ([], {"DISKLLM_KV_READ": "pread"}),
    # the streamed weights read by MADV_POPULATE_READ through a MADV_HUGEPAGE twin mapping
    # (large folios) instead of MADV_WILLNEED (one 4 KiB folio per page): patch 0015.
    # Since 0016 the server picks one by the working set (large folios while whole 2 MiB
    # weight blocks are half of it or more; variants without DISKLLM_KV_READ); these pin one
    "budget-willneed": ([], {"DISKLLM_KV_READ": "willneed"}),
    "budget-stream-willneed": ([], {"DISKLLM_KV_PATH": "stream", "DISKLLM_KV_READ": "willneed"}),
    "budget-populate": ([], {"DISKLLM_KV_READ": "populate"}),
    "budget-stream-populate": ([], {"DISKLLM_KV_PATH": "stream", "DISKLLM_KV_READ": "populate"}),
    # ... with the blocks read on the helper thread, one at a time (0015 as first measured),
    # or by 4 populate threads instead of the default 2
    "budget-stream-populate-sync": ([], {"DISKLLM_KV_PATH": "stream", "DISKLLM_KV_READ": "populate",
                                         "DISKLLM_KV_POPULATE_THREADS": "0"}),
    "budget-stream-populate-4": ([], {"DISKLLM_KV_PATH": "stream", "DISKLLM_KV_READ": "populate",
                                      "DISKLLM_KV_POPULATE_THREADS": "4"}),
    # OpenMP's barrier spin-wait off: a compute thread waiting for another one's page
    # sleeps instead of taking a core from the read-ahead helper
    "budget-passive": ([], {"OMP_WAIT_POLICY": "passive"}),
}
DEFAULT_VARIANTS = ("faults", "prefetch", "budget-stream", "budget")
FREE_VARIANTS = ("faults", "prefetch", "budget")  # beside ram without a cap


def run(model: str | Path = "smollm2", ctx: int = 8192, fill: int = 7000, quick: bool = False, *,
        fractions: tuple[float, ...] | list[float] = (0.5, 0.25),
        variants: tuple[str, ...] | list[str] = DEFAULT_VARIANTS, threads: int | None = None,
        runs: int | None = None, n_predict: int | None = None, server: Path | None = None,
        kv_window: int = KV_WINDOW, extra: list[str] | None = None, work_dir: Path | None = None,
        caps: tuple[int, ...] | list[int] = (), free_variants: tuple[str, ...] | list[str] = FREE_VARIANTS,
        baseline: Path | None = None, cap_on_parent: bool = False, say: Say = print) -> list[dict]:
    """Rows: one 'machine', 'free' rows (no cap), 'paging' rows (under caps), one 'disk'.
    cap_on_parent: each cap is set on a parent cgroup, the server runs in an unlimited child."""
    require_baseline(baseline, [*variants, *free_variants])
    if quick:
        ctx, fill = min(ctx, 2048), min(fill, 1000)
    runs = runs or (2 if quick else 3)
    n_predict = n_predict or (8 if quick else 32)
    s = setup(model, ctx, threads, work_dir, "diskllm-paging-")
    model_path, info, ctx_override, threads, work = s.model, s.info, s.ctx_override, s.threads, s.work
    binary = binaries(False, say, server, None)["patched"]
    kv_used = info.kv_bytes_per_token(kv_type_bytes(extra)) * fill  # q8_0 etc. halve it
    rows: list[dict] = [{"kind": "machine", **describe(work), "model": model_path.name, "model_bytes": info.file_size,
                         "kv_bytes_per_token": kv_used // fill, "kv_used": kv_used, "quick": quick,
                         "runs": runs, "n_predict": n_predict, "binary": str(binary)}]
    common: dict[str, Any] = dict(threads=threads, ctx_override=ctx_override, work=work, say=say, kv_window=kv_window)

    base_flags = list(extra or [])

    def bench(backend: str, variant: str, **kw: Any) -> Bench:
        name, exe = variant_binary(variant, binary, baseline)
        flags, env = VARIANTS[name] if backend == "ssd" else ([], {})
        return Bench(backend, exe, model_path, ctx, fill, n_predict=n_predict, extra=base_flags + flags, env=env,
                     label=variant if backend == "ssd" else backend, **common, **kw)

    try:
        say(f"no cap: ram, ssd {', '.join(free_variants)} side by side ({model_path.name} -c {ctx}, fill {fill})")
        free = measure_interleaved([bench("ram", "ram")] + [bench("ssd", v) for v in free_variants],
                                   runs + (0 if quick else 2))
        rows += [{"kind": "free", **r} for r in free]
        private = next((r.get("rss_anon") for r in free if r.get("backend") == "ssd" and r.get("answered")), None)
        if private is None:
            raise RuntimeError("the ssd server did not answer without a cap: " + "; ".join(
                str(r.get("error")) for r in free))
        base = kv_used + info.file_size
        plan = [(int(private + f * base), f) for f in fractions] + [(int(c), None) for c in caps]
        for cap, f in plan:
            if f is None:
                f = round((cap - private) / base, 3)
            for v in variants:
                say(f"{v} under {cap / 2**20:.0f} MiB = RssAnon {private / 2**20:.0f} + {f:g} x "
                    f"(KV {kv_used / 2**20:.0f} + weights {info.file_size / 2**20:.0f}) MiB")
                drop_file_cache(model_path, verify=True)
                r = measure_interleaved([bench("ssd", v, cap=cap, cap_fraction=f, cap_on_parent=cap_on_parent)], runs)[0]
                rows.append({"kind": "paging", **r, "private_base": private, "paged_base": base,
                             "room": cap - private})
        say("disk read rates (O_DIRECT, fresh file)")
        rows.append({"kind": "disk", **disk_read_rates(work, 256 if quick else 1024)})
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def streamed_part(r: dict) -> float:
    """W - B of a paging row: KV used + weights minus the cap's room for them."""
    return r.get("paged_base", 0) - r.get("room", r.get("cap_fraction", 0) * r.get("paged_base", 0))


def limit_tps(r: dict, seq: float | None, free: list[dict]) -> float | None:
    """min(disk rate / (W - B), the same variant's uncapped decode) for a paging row."""
    stream = streamed_part(r)
    uncapped = next((x.get("decode_tps") for x in free if x.get("variant") == r["variant"] and x.get("answered")), None)
    if uncapped is None:  # variants without an uncapped row: the default's
        uncapped = next((x.get("decode_tps") for x in free if x.get("variant") == "budget" and x.get("answered")), None)
    disk = seq / stream if seq and stream > 0 else None
    vals = [v for v in (disk, uncapped) if v]
    return min(vals) if vals else None


def _f(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    m = next((r for r in rows if r["kind"] == "machine"), {})
    disk = next((r for r in rows if r["kind"] == "disk"), None)
    seq = disk["seq_read_Bps"] if disk else None
    out = []
    free = [r for r in rows if r["kind"] == "free"]
    if free:
        r0 = free[0]
        out += [f"{m.get('model')} -c {r0['ctx']}, {r0['fill']} tokens filled, no cap, decode = median of "
                f"{len(r0.get('decode_runs') or [])} x {m.get('n_predict')} tokens:", "",
                "| server | decode tok/s | vs ram | RssAnon MB | KV resident MB |", "|---|---:|---:|---:|---:|"]
        ram = next((r.get("decode_tps") for r in free if r["variant"] == "ram"), None)
        for r in free:
            tps = r.get("decode_tps")
            out.append(f"| {r['variant'] if r['backend'] == 'ram' else 'ssd ' + r['variant']} | {_f(tps, '.2f')} "
                       f"| {_f(tps / ram if tps and ram else None, '.2f')} | {_f((r.get('rss_anon') or 0) / 1e6, '.0f')} "
                       f"| {_f(r['kv_resident'] / 1e6 if r.get('kv_resident') is not None else None, '.0f')} |")
    paging = [r for r in rows if r["kind"] == "paging"]
    if paging:
        out += ["", "W = KV used + weights; B = cap - private memory (room for KV + weights); limit = "
                "min(disk sequential / (W - B), the variant's uncapped decode)", "",
                "| cap | ssd variant | decode tok/s | vs faults | x limit | read / token MB | / working set | / (W-B) "
                "| storage read rate MB/s | x disk sequential | cgroup peak MB | note |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in paging:
            ok = r.get("answered")
            rate = r.get("kv_read_Bps") if ok else None
            per_tok = r.get("read_bytes_per_token") if ok else None
            faults = next((x.get("decode_tps") for x in paging
                           if x["variant"] == "faults" and x["cap_fraction"] == r["cap_fraction"]), None)
            tps = r.get("decode_tps")
            note = "; ".join(x for x in (r.get("runs_cut"), r.get("error"), path_note(r)) if x)
            lim = limit_tps(r, seq, free)
            stream = streamed_part(r)
            out.append(f"| {r['cap_fraction']:g} = {r['cap_bytes'] / 1e6:.0f} MB | {r['variant']} | {_f(tps, '.2f')} "
                       f"| {_f(tps / faults if tps and faults else None, '.2f')} "
                       f"| {_f(tps / lim if tps and lim else None, '.2f')} "
                       f"| {_f(per_tok / 1e6 if per_tok else None, '.0f')} "
                       f"| {_f(per_tok / r['paged_base'] if per_tok and r.get('paged_base') else None, '.2f')} "
                       f"| {_f(per_tok / stream if per_tok and stream > 0 else None, '.2f')} "
                       f"| {_f(rate / 1e6 if rate else None, '.0f')} | {_f(rate / seq if rate and seq else None, '.2f')} "
                       f"| {_f((r.get('cgroup_peak') or 0) / 1e6, '.0f')} | {note.replace('|', '/')[:100]} |")
    if disk:
        out += ["", f"Disk, same run ({disk['test_file_mib']} MiB fresh file, O_DIRECT): sequential 1 MiB reads "
                f"{disk['seq_read_Bps'] / 1e6:.0f} MB/s; random 4 KiB reads {disk['rand4k_read_Bps'] / 1e6:.0f} MB/s"]
    return "\n".join(out)


def _variant(v: str) -> str:
    if v.removesuffix(SUFFIX) not in VARIANTS:
        raise argparse.ArgumentTypeError(f"unknown variant {v!r} (one of {', '.join(sorted(VARIANTS))}, "
                                         f"each also as NAME{SUFFIX})")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("bench.kv_paging", __doc__, ctx=8192, fill=7000)
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.5, 0.25])
    ap.add_argument("--caps-mib", type=int, nargs="*", default=[],
                    help="absolute caps (MiB) beside the fractions, e.g. 2500 for the full-size 7B")
    # at least one: the caps are set from an ssd server's private memory without a cap
    ap.add_argument("--free-variants", nargs="+", type=_variant, default=list(FREE_VARIANTS))
    ap.add_argument("--variants", nargs="+", type=_variant, default=list(DEFAULT_VARIANTS),
                    help=f"of {', '.join(sorted(VARIANTS))}; NAME{SUFFIX} runs NAME on --baseline-server")
    ap.add_argument("--baseline-server", type=Path, help=f"llama-server for the {SUFFIX} variants (the old design)")
    ap.add_argument("--kv-window", type=int, default=KV_WINDOW)
    ap.add_argument("--server", type=Path, help="patched llama-server instead of the cached build")
    ap.add_argument("--cap-on-parent", action="store_true",
                    help="set each cap on a parent cgroup and run the server in an unlimited child (a slice's limit)")
    ap.add_argument("extra", nargs="*", help="after --: extra llama-server flags for every server (e.g. -ctk q8_0 -ctv q8_0)")
    a = ap.parse_args(argv)
    rows = run(a.model, a.ctx, a.fill, a.quick, fractions=a.fractions, variants=a.variants, runs=a.runs,
               n_predict=a.n_predict, threads=a.threads, server=a.server, kv_window=a.kv_window,
               extra=a.extra, work_dir=a.work_dir, caps=[c << 20 for c in a.caps_mib],
               free_variants=a.free_variants, baseline=a.baseline_server, cap_on_parent=a.cap_on_parent,
               say=say_stderr)
    return emit(rows, a.json, table(rows))


if __name__ == "__main__":
    sys.exit(main())
