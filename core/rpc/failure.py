"""One line naming the worker a server lost, and no KV file left behind.

At this pin the RPC client cannot survive a lost worker: its dispatcher thread
calls GGML_ABORT("Remote RPC server crashed or returned malformed response"),
which names no endpoint, and the whole llama-server dies mid-reply (a client
sees a dropped connection). Rather than patch llama.cpp, DiskLLM waits for the
dead server, asks each of its workers whether it still listens, names the one
that does not, and removes what the aborted process could not clean up: its KV
files, its registry entry and its slot locks."""
from __future__ import annotations

import time
from pathlib import Path

import psutil

from diskllm.core.errors import DiskLLMError
from diskllm.core.rpc.endpoints import parse_endpoints
from diskllm.core.rpc.probe import reachable
from diskllm.core.server import ServerEntry, forget_dead_server, log_tail

_RPC_LOG = ("Remote RPC server crashed", "Failed to connect to", "RPC handshake failed")


class WorkerLost(DiskLLMError):
    """The server died because a worker stopped answering."""


def _gone(entry: ServerEntry, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            p = psutil.Process(entry.pid)
            dead = (entry.create_time and abs(p.create_time() - entry.create_time) > 1.0) \
                or p.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            dead = True
        if dead or time.monotonic() > deadline:
            return bool(dead)
        time.sleep(0.1)


def _rpc_log_line(log: Path) -> str | None:
    try:
        text = log.read_bytes()[-64 * 1024:].decode("utf-8", errors="replace")
    except OSError:
        return None
    hits = [ln.strip() for ln in text.splitlines() if any(m in ln for m in _RPC_LOG)]
    return hits[-1] if hits else None


def explain_lost_server(entry: ServerEntry, wait: float = 5.0) -> WorkerLost | None:
    """If `entry` (a server with --rpc workers) died, clean up after it and say which worker
    it lost; None while it lives or when it used no workers."""
    if not entry.rpc or not _gone(entry, wait):
        return None
    removed = forget_dead_server(entry)
    lost = [ep for ep in parse_endpoints(entry.rpc) if not reachable(ep)]
    kv = f"; its KV file{'s' if len(removed) != 1 else ''} removed" if removed else ""
    if lost:
        names = ", ".join(str(ep) for ep in lost)
        what = f"worker {names} stopped answering" if len(lost) == 1 else f"workers {names} stopped answering"
        return WorkerLost(f"{what}: llama-server (pid {entry.pid}) for {entry.model} exited mid-reply{kv} "
                          f"(log: {entry.log})")
    line = _rpc_log_line(Path(entry.log)) or " | ".join(log_tail(Path(entry.log), 2)) or "no output"
    return WorkerLost(f"llama-server (pid {entry.pid}) for {entry.model} exited; its workers "
                      f"{', '.join(entry.rpc)} still listen: {line}{kv} (log: {entry.log})")


def explain_or(entry: ServerEntry, err: DiskLLMError) -> DiskLLMError:
    """The worker line when `err` came from a server that lost a worker, else `err`."""
    return explain_lost_server(entry) or err
