"""`diskllm worker`: rpc-server processes from the same build, and their registry.

A worker is ggml's rpc-server: it holds the layers (weights and KV) a main
llama-server offloads to it with --rpc, and computes them. Registry files live
in run/workers/<pid>.json, beside (not among) the servers' run/<pid>.json. The
RPC protocol has no authentication: loopback unless the user says otherwise."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from diskllm.core.atomic import atomic_write_text
from diskllm.core.build import Progress, ensure_server, rpc_server_path
from diskllm.core.errors import DiskLLMError
from diskllm.core.paths import Home
from diskllm.core.rpc.endpoints import DEFAULT_WORKER_PORT, Endpoint
from diskllm.core.server import MemoryInfo, memory_of, pick_port, terminate

UNSAFE_BIND = ("the RPC protocol has no authentication: anyone who can reach {bind} can use this worker's "
               "memory and CPU and read what it holds; use it only on a trusted network or over an SSH tunnel")


def workers_dir(home: Home) -> Path:
    return home.run / "workers"


@dataclass
class WorkerOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_WORKER_PORT
    port_explicit: bool = False
    threads: int | None = None
    mem: int | None = None  # MiB offered to clients (rpc-server --mem, patches/0007); None = the machine's


@dataclass
class WorkerEntry:
    pid: int
    host: str
    port: int
    threads: int | None
    mem: int | None
    binary: str
    log: str
    started_at: float
    create_time: float
    argv: list[str] = field(default_factory=list)
    home: str = ""

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port)

    @property
    def address(self) -> str:
        """What a main server's --rpc takes (0.0.0.0 binds are reached on loopback here)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"{host}:{self.port}"


@dataclass
class RunningWorker:
    entry: WorkerEntry
    process: subprocess.Popen | None = None


def worker_argv(binary: Path, opts: WorkerOptions, port: int) -> list[str]:
    argv = [str(binary), "-H", opts.host, "-p", str(port)]
    if opts.threads:
        argv += ["-t", str(opts.threads)]
    if opts.mem:
        argv += ["-m", str(opts.mem)]
    return argv


async def ensure_rpc_server(home: Home, progress: Progress | None = None) -> Path:
    """The rpc-server of the build llama-server comes from (built on first use)."""
    server = await ensure_server(home, progress=progress)
    rpc = rpc_server_path(server)
    if not rpc.is_file():
        raise DiskLLMError(f"no rpc-server beside {server} (a server_binary / DISKLLM_LLAMA_SERVER build "
                           "without it?): unset the override, or 'diskllm build --force'")
    return rpc


def _listening(pid: int, port: int) -> bool:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def _log_tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip() and "!!!" not in ln]
    except OSError:
        return "no output"
    return " | ".join(lines[-n:]) or "no output"


async def start_worker(home: Home, opts: WorkerOptions, binary: Path, progress: Progress | None = None,
                       *, timeout: float = 30.0, env: dict[str, str] | None = None) -> RunningWorker:
    """Start rpc-server, wait until it listens, register it. `env`: extra variables for it
    (the benchmark sets GGML_RPC_DEBUG=1 to count its commands)."""
    home.ensure()
    wdir = workers_dir(home)
    wdir.mkdir(parents=True, exist_ok=True)
    port = pick_port(opts.host, opts.port, opts.port_explicit)
    argv = worker_argv(binary, opts, port)
    log_path = home.logs / f"worker-{port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    if progress:
        progress(f"starting rpc-server on {opts.host}:{port} (log: {log_path})")
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, **env} if env else None)
        except OSError as e:
            raise DiskLLMError(f"cannot start {binary}: {e.strerror}") from None
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        create_time = 0.0
    entry = WorkerEntry(pid=proc.pid, host=opts.host, port=port, threads=opts.threads, mem=opts.mem,
                        binary=str(binary), log=str(log_path), started_at=time.time(),
                        create_time=create_time, argv=argv, home=str(home.root))
    deadline = time.monotonic() + timeout
    # Readiness from the kernel's socket table: a test connection would count as a client.
    while not _listening(proc.pid, port):
        if proc.poll() is not None:
            raise DiskLLMError(f"rpc-server exited at start (code {proc.returncode}): {_log_tail(log_path)} "
                               f"(log: {log_path})")
        if time.monotonic() > deadline:
            _kill(proc)
            raise DiskLLMError(f"rpc-server not listening on {opts.host}:{port} after {timeout:.0f}s (log: {log_path})")
        await asyncio.sleep(0.1)
    atomic_write_text(wdir / f"{proc.pid}.json", json.dumps(asdict(entry), indent=2))
    return RunningWorker(entry, proc)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _alive(entry: WorkerEntry) -> bool:
    try:
        p = psutil.Process(entry.pid)
        if entry.create_time and abs(p.create_time() - entry.create_time) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def list_workers(home: Home) -> list[WorkerEntry]:
    """Running workers; entries of dead processes are removed."""
    out: list[WorkerEntry] = []
    wdir = workers_dir(home)
    if not wdir.is_dir():
        return out
    for path in sorted(wdir.glob("*.json")):
        try:
            entry = WorkerEntry(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            entry = None
        if entry is None or not _alive(entry):
            path.unlink(missing_ok=True)
            continue
        out.append(entry)
    return sorted(out, key=lambda e: e.started_at)


def worker_memory(entry: WorkerEntry) -> MemoryInfo | None:
    try:
        return memory_of(entry.pid)
    except DiskLLMError:
        return None


async def stop_worker(worker: WorkerEntry | RunningWorker, grace: float = 5.0) -> None:
    """SIGTERM, SIGKILL after `grace` s (rpc-server has no clean shutdown); unregister."""
    popen = worker.process if isinstance(worker, RunningWorker) else None
    entry = worker.entry if isinstance(worker, RunningWorker) else worker
    path = workers_dir(Home(Path(entry.home))) / f"{entry.pid}.json"
    path.unlink(missing_ok=True)  # first: a foreground `diskllm worker` reads it as "stopped on purpose"
    try:
        await terminate(entry.pid, lambda: _alive(entry), grace, poll=0.05, what="worker pid")
    finally:
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)
