"""RPC workers benchmark (issue 17): one host vs the same model over two loopback workers.

Two patched llama-servers run side by side at the same ctx, fill and threads: one
alone (`-ngl 0`, SSD KV), one spread over two `rpc-server` workers on 127.0.0.1
with the split `diskllm run --rpc` passes (core.server.build_argv: an equal share
per host, exact --tensor-split). Both are filled with the same N tokens of real
text, then decode runs alternate between them (bench/kv_backend.Bench). Memory is
the main host's, at the same fill: RssAnon, RssFile, KV file bytes on disk; the
workers' RssAnon (the layers they hold) beside it.

What crosses the wire is counted per worker over the decode runs, per generated
token: bytes from the kernel's TCP counters of the worker's connection (`ss -ti`:
bytes_received + bytes_sent; /proc/PID/io does not count socket send/recv), and
the RPC commands it served, from its own debug log (GGML_RPC_DEBUG=1 prints one
line per command): all of them, and those that send a reply the main host waits
for (get_tensor, copy_tensor, ...), i.e. round trips. Loopback shows the
protocol's cost, not a real network's; docs/how-it-works.md turns these bytes and
round trips into time on 1 and 10 Gbit/s links.

    python -m bench.rpc --model smollm2 --ctx 8192 --fill 2000
    python -m bench.rpc --quick
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from diskllm.bench.kv_backend import (Bench, _free_port, bench_parser, binaries, emit, measure_interleaved,
                                      say_stderr, setup)
from diskllm.core.build import rpc_server_path
from diskllm.core.config import Config
from diskllm.core.paths import Home
from diskllm.core.rpc.workers import RunningWorker, WorkerOptions, start_worker, stop_worker, worker_memory
from diskllm.core.server import ServerOptions, build_argv

Say = Callable[[str], None]
# server-side commands that answer (ggml-rpc.cpp rpc_serve_client: send_msg after them)
REPLIES = ("get_tensor", "copy_tensor", "set_tensor_hash", "get_alloc_size", "alloc_buffer", "buffer_get_base",
           "get_alignment", "get_max_size", "get_device_memory", "hello", "init_tensor")
_CMD = re.compile(r"^\[(\w+)\]", re.M)
KEYS = ("received", "sent", "commands", "replies")


def tcp_bytes(port: int) -> tuple[int, int]:
    """(bytes received, bytes sent) by the established TCP connections on local `port`."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    rx = sum(int(x) for x in re.findall(r"bytes_received:(\d+)", out))
    tx = sum(int(x) for x in re.findall(r"bytes_sent:(\d+)", out)) or \
        sum(int(x) for x in re.findall(r"bytes_acked:(\d+)", out))
    return rx, tx


def _counters(workers: list[RunningWorker]) -> dict[str, int]:
    c = dict.fromkeys(KEYS, 0)
    for w in workers:
        rx, tx = tcp_bytes(w.entry.port)
        c["received"] += rx
        c["sent"] += tx
        try:
            cmds = _CMD.findall(Path(w.entry.log).read_text(errors="replace"))
        except OSError:
            cmds = []
        c["commands"] += len(cmds)
        c["replies"] += sum(1 for x in cmds if x in REPLIES)
    return c


class SplitBench(Bench):
    """The split server; every decode run also reads its workers' I/O counters."""

    def __init__(self, *args: Any, workers: list[RunningWorker], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.workers = workers
        self.wire: list[dict[str, float]] = []

    def decode_once(self, i: int, runs: int) -> None:
        before = _counters(self.workers)
        n0 = len(self.tps)
        super().decode_once(i, runs)
        if len(self.tps) == n0 or not self.tps[-1]:
            return
        after = _counters(self.workers)
        # a run re-evaluates one prompt token, then generates n_predict (ignore_eos): per token
        n = self.n_predict
        self.wire.append({k: (after[k] - before[k]) / n for k in KEYS})

    def finish(self) -> dict[str, Any]:
        row = super().finish()
        if self.wire:
            med = {k: statistics.median(x[k] for x in self.wire) for k in KEYS}
            row["wire_bytes_per_token"] = med["received"] + med["sent"]
            row["to_workers_per_token"] = med["received"]
            row["from_workers_per_token"] = med["sent"]
            row["commands_per_token"] = med["commands"]
            row["replies_per_token"] = med["replies"]
        return row


def _split_argv(binary: Path, model: Path, ctx: int, workers: list[str]) -> list[str]:
    """-ngl, --rpc and --tensor-split exactly as `diskllm run --rpc` passes them."""
    opts = ServerOptions.from_config(Config(), model, ctx=ctx, rpc=workers)
    argv = build_argv(Home(Path(tempfile.gettempdir())), opts, binary)
    out: list[str] = []
    for flag in ("--rpc", "-ngl", "--tensor-split"):
        out += [flag, argv[argv.index(flag) + 1]]
    return out


def run(model: str | Path = "smollm2", ctx: int = 8192, fill: int = 2000, quick: bool = False, *,
        threads: int | None = None, runs: int | None = None, n_predict: int | None = None,
        say: Say = print, server: Path | None = None, work_dir: Path | None = None) -> list[dict[str, Any]]:
    runs = runs or (2 if quick else 5)
    n_predict = n_predict or (16 if quick else 64)
    binary = binaries(False, say, server)["patched"]
    rpc_bin = rpc_server_path(binary)
    if not rpc_bin.is_file():
        raise SystemExit(f"error: no rpc-server beside {binary} (an older build: diskllm build --force)")
    st = setup(model, ctx, threads, work_dir, "diskllm-bench-rpc-")
    home = Home(st.work / "home").ensure()
    workers: list[RunningWorker] = []
    try:
        for _ in range(2):
            workers.append(asyncio.run(start_worker(
                home, WorkerOptions(port=_free_port(), port_explicit=True, threads=st.threads), rpc_bin,
                env={"GGML_RPC_DEBUG": "1"})))  # one log line per command: counted, not timed
        addrs = [w.entry.address for w in workers]
        split_flags = _split_argv(binary, st.model, ctx, addrs)
        say(f"  workers {', '.join(addrs)}; split {' '.join(split_flags)}")
        common = dict(threads=st.threads, ctx_override=st.ctx_override, n_predict=n_predict, work=st.work, say=say)
        single = Bench("ssd", binary, st.model, ctx, fill, label="single", **common)
        split = SplitBench("ssd", binary, st.model, ctx, fill, label="2 workers", workers=workers, **common)
        ngl = split.argv.index("-ngl")
        del split.argv[ngl:ngl + 2]                       # the -ngl 0 of a single host
        split.argv[1:1] = split_flags
        split.row["command"] = " ".join(split.argv)
        worker_anon: list[int] = []

        def read_workers() -> None:  # the workers' share of the model, while the split server holds it
            worker_anon.extend(m.rss_anon for m in (worker_memory(w.entry) for w in workers) if m)

        rows = measure_interleaved([single, split], runs, before_finish=read_workers)
        rows[1]["workers_rss_anon"] = worker_anon
    finally:
        for w in workers:
            asyncio.run(stop_worker(w))
        if not work_dir:
            shutil.rmtree(st.work, ignore_errors=True)
    for r in rows:
        r["kind"] = "rpc"
    rows.append({"kind": "machine", "model": st.model.name, "runs": runs, "n_predict": n_predict,
                 "loadavg": os.getloadavg()[0]})
    return rows


def _mb(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.0f}"


def _f(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    m = next((r for r in rows if r["kind"] == "machine"), {})
    rr = [r for r in rows if r["kind"] == "rpc"]
    if not rr:
        return ""
    out = [f"{m.get('model')} -c {rr[0]['ctx']}, {rr[0]['fill']} tokens filled, {rr[0]['threads']} threads per "
           f"host, decode = median of {m.get('runs')} x {m.get('n_predict')} tokens", "",
           "| setup | decode tok/s | main RssAnon MB | main RssFile MB | main KV on disk MB | workers RssAnon MB "
           "| bytes over RPC / token (to / from workers) | RPC commands / token | round trips / token |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rr:
        if not r.get("answered"):
            out.append(f"| {r['variant']} | {r.get('error', 'failed')} ||||||| ")
            continue
        workers = " + ".join(_mb(x) for x in r.get("workers_rss_anon") or []) or "-"
        wire = r.get("wire_bytes_per_token")
        split = (f"{wire:,.0f} ({r['to_workers_per_token']:,.0f} / {r['from_workers_per_token']:,.0f})"
                 if wire is not None else "-")
        out.append(f"| {r['variant']} | {_f(r.get('decode_tps'))} | {_mb(r.get('rss_anon'))} | {_mb(r.get('rss_file'))} "
                   f"| {_mb(r.get('kv_disk'))} | {workers} | {split} "
                   f"| {_f(r.get('commands_per_token'), '.1f')} | {_f(r.get('replies_per_token'), '.1f')} |")
    if len(rr) == 2 and rr[0].get("decode_tps") and rr[1].get("decode_tps"):
        out.append(f"| **2 workers / single** | {rr[1]['decode_tps'] / rr[0]['decode_tps']:.2f} | | | | | | | |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("bench.rpc", __doc__, ctx=8192, fill=2000)
    a = ap.parse_args(argv)
    if a.quick:
        a.ctx, a.fill = 2048, 256
    rows = run(a.model, a.ctx, a.fill, a.quick, threads=a.threads, runs=a.runs, n_predict=a.n_predict,
               work_dir=a.work_dir, say=say_stderr)
    return emit(rows, a.json, table(rows))


if __name__ == "__main__":
    raise SystemExit(main())
