"""`diskllm worker`: an RPC worker (rpc-server) that holds and computes layers for a main server."""
from __future__ import annotations

import argparse
import asyncio
import signal
import time

from diskllm.cli.args import require_positive
from diskllm.core.errors import DiskLLMError
from diskllm.core.paths import Home
from diskllm.core.rpc.endpoints import DEFAULT_WORKER_PORT, Endpoint
from diskllm.core.rpc.workers import (UNSAFE_BIND, WorkerEntry, WorkerOptions, ensure_rpc_server, list_workers,
                                      start_worker, stop_worker, worker_memory, workers_dir)

from diskllm.cli.output import duration, human_bytes, say


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="start an RPC worker: hold and compute layers for `run --rpc`")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; the protocol has no authentication)")
    p.add_argument("--port", type=int, help=f"port (default {DEFAULT_WORKER_PORT}, busy -> next free)")
    p.add_argument("--threads", type=int, help="CPU threads (default: half the cores, rpc-server's own)")
    p.add_argument("--mem", type=int, metavar="MIB",
                   help="memory offered to main servers, in MiB (default: this machine's free RAM); "
                        "their layer split follows it")
    p.add_argument("--headless", action="store_true", help="start it detached, print its address and pid, return")
    p.set_defaults(func=cmd_worker)


def _options(args: argparse.Namespace) -> WorkerOptions:
    require_positive(args, "port", "threads", "mem")
    if args.port is not None and args.port > 65535:
        raise DiskLLMError(f"--port {args.port} is out of range (1-65535)")
    if ":" in args.host:
        raise DiskLLMError(f"--host {args.host}: IPv6 is not supported by llama.cpp's RPC client")
    return WorkerOptions(host=args.host, port=args.port or DEFAULT_WORKER_PORT,
                         port_explicit=args.port is not None, threads=args.threads, mem=args.mem)


def cmd_worker(args: argparse.Namespace) -> int:
    opts = _options(args)
    if not Endpoint(opts.host, 1).is_loopback:
        say("warning: " + UNSAFE_BIND.format(bind=opts.host))
    home = Home.from_env().ensure()

    async def start():
        binary = await ensure_rpc_server(home, progress=say)
        return await start_worker(home, opts, binary, progress=say)

    worker = asyncio.run(start())
    e = worker.entry
    offered = f", offers {e.mem} MiB" if e.mem else ""
    print(f"worker listening on {e.host}:{e.port} (pid {e.pid}{offered}); log: {e.log}", flush=True)
    print(f"use it with: diskllm run MODEL --rpc {e.address}", flush=True)
    if args.headless:
        print(f"stop it with: diskllm stop {e.address}", flush=True)
        return 0

    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
    entry_file = workers_dir(home) / f"{e.pid}.json"
    print("press Ctrl-C to stop", flush=True)
    try:
        while worker.process is not None and worker.process.poll() is None:
            time.sleep(0.5)
        if not entry_file.exists():
            print("worker stopped", flush=True)
            return 0
        raise DiskLLMError(f"rpc-server exited (code {worker.process.returncode}); log: {e.log}")
    finally:
        asyncio.run(stop_worker(worker))


def worker_rows(home: Home) -> list[tuple[str, ...]]:
    """`ps` rows for the running workers (header first), or none."""
    workers = list_workers(home)
    if not workers:
        return []
    now = time.time()
    rows = [("WORKER", "PID", "THREADS", "OFFERS", "UPTIME", "PRIVATE RAM")]
    for w in workers:
        mem = worker_memory(w)
        rows.append((w.address, str(w.pid), str(w.threads or "auto"), f"{w.mem} MiB" if w.mem else "all RAM",
                     duration(now - w.started_at), human_bytes(mem.rss_anon, "binary") if mem else "-"))
    return rows


def matching_workers(home: Home, spec: str) -> list[WorkerEntry]:
    """Workers named by HOST:PORT, :PORT or PORT."""
    host, _, port = spec.rpartition(":")
    if not port.isdigit():
        return []
    return [w for w in list_workers(home)
            if w.port == int(port) and (not host or host in (w.host, w.address.rpartition(":")[0]))]


async def stop_workers(workers: list[WorkerEntry]) -> None:
    await asyncio.gather(*(stop_worker(w) for w in workers))
