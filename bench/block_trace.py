"""Where a capped decode's disk time goes: a trace of the block layer (issue 14).

Starts one patched ssd server in a memory cgroup of --cap-mib (server + page cache),
fills the prompt, decodes once to settle, then records the tracefs events
block:block_rq_issue and block:block_rq_complete for --seconds of a second decode and
prints, for the reads of the devices holding the model and the KV files:

- reads completed and MB/s over the window;
- busy: the share of the window with at least one read in flight, and MB/s while busy;
- the mean number of reads in flight while busy;
- re-issues: a read issued again before it completed (the driver's queue was full);
- bytes by request size;
- gaps with no read in flight longer than --gap-ms: how many, their total, the largest.

A gap means neither compute nor the helper thread asked the disk for anything: the
read-ahead was full and compute was busy elsewhere (patches/0020 was found this way).
Needs root and tracefs (mounted at /sys/kernel/tracing if it is not).

    python -m bench.block_trace --model smollm2 --ctx 8192 --fill 7000 --cap-mib 81 -- -fa on -ctk q8_0 -ctv q8_0

Importable: summarize(lines, devices) -> BlockSummary; report(summary) -> text.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from diskllm.bench.kv_backend import Bench, bench_parser, binaries, say_stderr, setup
from diskllm.bench.machine import drop_file_cache

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("block/block_rq_issue", "block/block_rq_complete")
# "254,0 RA 589824 () 514628896 + 1152 ..." (issue) and "254,0 RA () 514626808 + 2088 ..." (complete)
_EVENT = re.compile(r"\s([\d.]+): block_rq_(issue|complete): (\d+),(\d+) (\S+) (?:\d+ )?\(.*?\) (\d+) \+ (\d+)")
SIZE_BINS_KIB = (4, 64, 256, 512, 1024)
SIZE_LABELS = [f"<= {kib} KiB" for kib in SIZE_BINS_KIB] + [f"> {SIZE_BINS_KIB[-1]} KiB"]


@dataclass
class BlockSummary:
    seconds: float = 0.0
    reads: int = 0
    reissues: int = 0
    bytes: int = 0
    busy_seconds: float = 0.0
    in_flight_mean: float = 0.0     # reads in flight, averaged over the busy time
    gaps: list[float] = field(default_factory=list)  # seconds with no read in flight, over the threshold
    bytes_by_size: dict[str, int] = field(default_factory=dict)


def _size_bin(n: int) -> str:
    return next((label for kib, label in zip(SIZE_BINS_KIB, SIZE_LABELS) if n <= kib << 10), SIZE_LABELS[-1])


def summarize(lines: Iterable[str], devices: set[tuple[int, int]] | None = None,
              gap_seconds: float = 0.005) -> BlockSummary:
    """Reads (not writes) on `devices` (major, minor; all when None), each counted from its
    first issue to its completion."""
    first: dict[tuple[int, int, int], float] = {}
    done: list[tuple[float, float, int]] = []
    s = BlockSummary()
    for line in lines:
        m = _EVENT.search(line)
        if not m or "R" not in m.group(5):
            continue
        dev = (int(m.group(3)), int(m.group(4)))
        if devices is not None and dev not in devices:
            continue
        t, kind, key = float(m.group(1)), m.group(2), (*dev, int(m.group(6)))
        if kind == "issue":
            if key in first:
                s.reissues += 1
            else:
                first[key] = t
        elif key in first:
            done.append((first.pop(key), t, int(m.group(7)) * 512))
    if not done:
        return s
    edges = sorted([(a, 1) for a, _, _ in done] + [(b, -1) for _, b, _ in done])
    t0, t1 = edges[0][0], edges[-1][0]
    in_flight, prev, area = 0, t0, 0.0
    for t, step in edges:
        if in_flight > 0:
            s.busy_seconds += t - prev
            area += in_flight * (t - prev)
        elif t - prev > gap_seconds:
            s.gaps.append(t - prev)
        prev, in_flight = t, in_flight + step
    s.seconds, s.reads = t1 - t0, len(done)
    s.bytes = sum(n for _, _, n in done)
    s.in_flight_mean = area / s.busy_seconds if s.busy_seconds else 0.0
    for _, _, n in done:
        s.bytes_by_size[_size_bin(n)] = s.bytes_by_size.get(_size_bin(n), 0) + n
    return s


def report(s: BlockSummary, gap_ms: float) -> str:
    if not s.reads:
        return "no reads completed in the window"
    mb = s.bytes / 1e6
    sizes = ", ".join(f"{k} {s.bytes_by_size[k] / s.bytes:.2f}" for k in SIZE_LABELS if k in s.bytes_by_size)
    return "\n".join([
        f"{s.reads} reads, {mb:.0f} MB in {s.seconds:.2f} s: {mb / s.seconds:.0f} MB/s",
        f"busy {s.busy_seconds / s.seconds:.2f} of the time, {mb / s.busy_seconds:.0f} MB/s while busy, "
        f"{s.in_flight_mean:.1f} reads in flight on average while busy",
        f"re-issued {s.reissues} times (the driver's queue was full)",
        f"share of bytes by request size: {sizes}",
        f"gaps with no read in flight over {gap_ms:g} ms: {len(s.gaps)}, {sum(s.gaps) * 1000:.0f} ms in all"
        + (f", the largest {max(s.gaps) * 1000:.1f} ms" if s.gaps else ""),
    ])


def _tracefs() -> Path:
    if not (TRACEFS / "events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True)
    if not (TRACEFS / "events" / "block").is_dir():
        raise SystemExit(f"error: no tracefs block events at {TRACEFS} (needs root and tracefs)")
    return TRACEFS


def _record(tr: Path, seconds: float, delay: float) -> list[str]:
    def w(name: str, value: str) -> None:
        (tr / name).write_text(value)
    w("tracing_on", "0")
    w("trace", "")
    w("buffer_size_kb", "65536")
    for e in EVENTS:
        w(f"events/{e}/enable", "1")
    try:
        time.sleep(delay)
        w("tracing_on", "1")
        time.sleep(seconds)
        w("tracing_on", "0")
        return (tr / "trace").read_text().splitlines()
    finally:
        for e in EVENTS:
            w(f"events/{e}/enable", "0")
        w("trace", "")
        w("buffer_size_kb", "1408")


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("bench.block_trace", __doc__, ctx=8192, fill=7000)
    ap.add_argument("--cap-mib", type=int, required=True, help="memory cgroup limit: server + page cache")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of the trace")
    ap.add_argument("--gap-ms", type=float, default=5.0)
    ap.add_argument("--server", type=Path, help="patched llama-server instead of the cached build")
    ap.add_argument("extra", nargs="*", help="after --: extra llama-server flags (e.g. -ctk q8_0 -ctv q8_0)")
    a: argparse.Namespace = ap.parse_args(argv)
    tr = _tracefs()
    st = setup(a.model, a.ctx, a.threads, a.work_dir, "diskllm-blocktrace-")
    try:
        binary = binaries(False, say_stderr, a.server)["patched"]
        drop_file_cache(st.model)
        # long enough for the trace to sit inside the second decode
        n_predict = a.n_predict or 256
        b = Bench("ssd", binary, st.model, a.ctx, a.fill, threads=st.threads, ctx_override=st.ctx_override,
                  n_predict=n_predict, work=st.work, say=say_stderr, cap=a.cap_mib << 20, extra=a.extra, label="trace")
        b.start()
        b.fill_prompt()
        b.decode_once(0, 2)
        if not b.ok:
            b.finish()
            raise SystemExit(f"error: {b.row['error']}")
        devices = {(os.major(d), os.minor(d)) for d in (os.stat(st.model).st_dev, os.stat(b.kv_dir).st_dev)}
        lines: list[str] = []
        rec = threading.Thread(target=lambda: lines.extend(_record(tr, a.seconds, delay=1.0)))
        rec.start()
        b.decode_once(1, 2)
        rec.join()
        row = b.finish()
        runs = ", ".join(f"{x:.2f}" for x in row.get("decode_runs", []))
        say_stderr(f"decode {runs} tok/s (the second run traced), {row.get('read_bytes_per_token', 0) / 1e6:.0f} MB per token")
        print(report(summarize(lines, devices, a.gap_ms / 1000), a.gap_ms))
    finally:
        if not a.work_dir:  # its log and KV directory, as the other benchmarks do
            shutil.rmtree(st.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
