"""Start, watch and stop llama-server processes; registry of running servers.

Async-first so the TUI can await it. The server is started with Popen (not an
asyncio subprocess) on purpose: asyncio kills its children when the loop
closes, and a `run --headless` or TUI-started server must outlive any loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from collections.abc import AsyncIterator, Iterator
from typing import Any, Callable

import httpx
import psutil

from diskllm.core.atomic import atomic_write_text
from diskllm.core.build import server_supports_flag, server_supports_kv_flags
from diskllm.core.config import Config
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.repack import ensure_private_dir, repack_cache_path
from diskllm.core.paths import Home

Progress = Callable[[str], None]
PORT_SCAN = 100  # how far past the default port to look for a free one


@dataclass
class ServerOptions:
    model_path: Path
    ctx: int = 4096
    host: str = "127.0.0.1"
    port: int = 8080
    port_explicit: bool = False
    kv_backend: str = "ssd"
    kv_window: int = 256
    kv_prefetch: int = 8
    repack: str = "off"  # config.REPACK_MODES
    kv_budget: int | None = None  # MiB resident while paging; None = the server's auto budget
    threads: int | None = None
    extra_args: list[str] = field(default_factory=list)
    parallel: int = 1
    model_name: str | None = None  # shown in `ps`; default: file stem
    rpc: list[str] = field(default_factory=list)  # RPC workers, HOST:PORT (core.rpc)
    ngl: int | None = None  # layers offloaded to the workers; None = an equal share per host
    rpc_weights: list[int] | None = None  # memory each worker offers (probed); None = equal

    @property
    def name(self) -> str:
        return self.model_name or Path(self.model_path).stem

    @classmethod
    def from_config(cls, cfg: Config, model: str | os.PathLike[str], *, name: str | None = None,
                    **overrides: Any) -> "ServerOptions":
        """config.toml's settings for `model`, with `overrides` (None = use the config's).

        The one place config and per-run choices (CLI flags, the TUI's start form)
        merge. A port given here counts as explicit: busy means an error, not the
        next free port."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown server options: {', '.join(sorted(unknown))}")
        given.setdefault("port_explicit", "port" in given)
        base = dict(ctx=cfg.ctx, host=cfg.host, port=cfg.port, kv_backend=cfg.kv_backend,
                    kv_window=cfg.kv_window, kv_prefetch=cfg.kv_prefetch, repack=cfg.repack, kv_budget=cfg.kv_budget,
                    threads=cfg.threads, rpc=list(cfg.rpc))
        return cls(model_path=Path(model), model_name=name, **{**base, **given})


@dataclass
class ServerEntry:
    """One running server, as stored in home.run/<pid>.json."""
    pid: int
    port: int
    host: str
    model: str
    model_path: str
    ctx: int
    kv_backend: str
    kv_window: int
    binary: str
    log: str
    started_at: float
    create_time: float  # psutil create_time: tells our process from a reused pid
    argv: list[str]
    home: str = ""  # DISKLLM_HOME root, to find this entry's registry file
    rpc: list[str] = field(default_factory=list)  # its RPC workers, HOST:PORT
    ngl: int = 0  # layers on the workers (-ngl)
    tensor_split: list[int] = field(default_factory=list)  # per worker, as passed

    @property
    def connect_host(self) -> str:
        return _connect_host(self.host)

    @property
    def base_url(self) -> str:
        h = self.connect_host
        h = f"[{h}]" if ":" in h else h
        return f"http://{h}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def api_key(self) -> str | None:
        """The key the server was started with (`run --api-key`): clients must send it."""
        return key_in_argv(self.argv)


@dataclass
class RunningServer:
    entry: ServerEntry
    process: subprocess.Popen | None = None  # set when started by this process

    @property
    def pid(self) -> int:
        return self.entry.pid

    @property
    def base_url(self) -> str:
        return self.entry.base_url


def key_in_argv(argv: list[str]) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a == "--api-key":
            return argv[i + 1]
    return None


def bearer(api_key: str | None) -> dict[str, str]:
    """Request headers for a server that wants a key (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # Same option llama-server (cpp-httplib) sets, so TIME_WAIT does not count as busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise DiskLLMError(f"cannot bind {host}:{port}: {e.strerror}") from None
    return True


def pick_port(host: str, port: int, explicit: bool) -> int:
    if port_is_free(host, port):
        return port
    if explicit:
        raise DiskLLMError(f"port {port} on {host} is in use")
    for p in range(port + 1, min(port + 1 + PORT_SCAN, 65536)):
        if port_is_free(host, p):
            return p
    raise DiskLLMError(f"no free port in {port}-{port + PORT_SCAN} on {host}")


def build_argv(home: Home, opts: ServerOptions, binary: Path, port: int | None = None) -> list[str]:
    """The exact llama-server command line for these options."""
    argv = [
        str(binary), "-m", str(opts.model_path), "-c", str(opts.ctx), *rpc_args(opts, binary),
        "--host", opts.host, "--port", str(port if port is not None else opts.port),
        "--slot-save-path", str(home.sessions), "--metrics", "--parallel", str(opts.parallel),
    ]
    if opts.threads:
        argv += ["-t", str(opts.threads)]
    if server_supports_kv_flags(binary):
        argv += ["--kv-backend", opts.kv_backend, "--kv-path", str(home.kv_cache),
                 "--kv-window", str(opts.kv_window)]
        if opts.kv_backend == "ssd" and server_supports_flag(binary, "--kv-prefetch"):
            argv += ["--kv-prefetch", str(opts.kv_prefetch)]
        if opts.kv_backend == "ssd" and opts.kv_budget:
            if not server_supports_flag(binary, "--kv-budget"):  # an older build: say so, never ignore a budget
                raise DiskLLMError(f"{binary} has no --kv-budget (built before paging budgets); "
                                   "'diskllm build' the patched server, or drop kv_budget / --kv-budget")
            argv += ["--kv-budget", str(opts.kv_budget)]
    elif opts.kv_backend != "ram":
        raise DiskLLMError(
            f"{binary} has no SSD KV backend (no --kv-backend flag); "
            "use --kv-backend ram, or 'diskllm build' the patched server"
        )
    return argv + repack_args(home, opts, binary) + list(opts.extra_args)


def rpc_args(opts: ServerOptions, binary: Path) -> list[str]:
    """-ngl and, with workers, --rpc and an exact --tensor-split (core.rpc.split decides it,
    so `show` and the start form estimate what the server does)."""
    if not opts.rpc:
        if opts.ngl:
            raise DiskLLMError("--ngl offloads layers to RPC workers: give them with --rpc HOST:PORT[,...]")
        return ["-ngl", "0"]
    from diskllm.core.models.gguf import read_gguf_info  # late: only a split reads the header
    from diskllm.core.rpc.endpoints import parse_endpoints, rpc_flag
    from diskllm.core.rpc.split import plan_split
    if not server_supports_flag(binary, "--rpc"):
        raise DiskLLMError(f"{binary} has no RPC backend (built without -DGGML_RPC=ON): "
                           "'diskllm build' the patched server, or unset server_binary")
    workers = parse_endpoints(opts.rpc)
    split = plan_split(read_gguf_info(opts.model_path), opts.ctx, [str(w) for w in workers],
                       opts.ngl, opts.rpc_weights)
    return ["--rpc", rpc_flag(workers), "-ngl", str(split.ngl), "--tensor-split", split.tensor_split_flag()]


def argv_split(argv: list[str]) -> tuple[int, list[int]]:
    """(-ngl, --tensor-split counts) of a command line build_argv made."""
    ngl, counts = 0, []
    for flag, value in zip(argv, argv[1:]):
        if flag == "-ngl":
            ngl = int(value)
        elif flag == "--tensor-split":
            counts = [int(c) for c in value.split(",")]
    return ngl, counts


_REPACK_FLAGS = ("--repack", "-nr", "--no-repack", "--repack-cache")


def repack_args(home: Home, opts: ServerOptions, binary: Path) -> list[str]:
    """Flags that keep repacked weights out of private RAM (opts.repack, config `repack`).

    "file": the repack cache of patches/0005, keyed by model, build and CPU; a binary
    without it gets --no-repack, which also keeps the weights file-backed. Flags the
    user passes through win."""
    if any(a.split("=", 1)[0] in _REPACK_FLAGS for a in opts.extra_args):
        return []
    if opts.repack == "off" or (opts.repack == "file" and not server_supports_flag(binary, "--repack-cache")):
        return ["--no-repack"]
    if opts.repack == "file":
        cache = repack_cache_path(home, Path(opts.model_path), binary)
        ensure_private_dir(cache.parent)
        return ["--repack-cache", str(cache)]
    return []


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:60] or "model"


_NOISE = re.compile(r"^\s*[.]*\s*$")
_LEVEL_E = re.compile(r"^[\d.]+ E ")  # llama.cpp's own error level
_ERRORISH = re.compile(r"\b(error|failed|failure|invalid|unknown|cannot|unable|exception|what\(\)|abort)", re.I)


def _raise_disk_full(entry: ServerEntry, log_path: Path) -> None:
    """A failed KV reservation gets the disk-space line, not "failed to fit params"."""
    if entry.kv_backend != "ssd":
        return
    from diskllm.core.kv_space import explain_start_failure  # late: it reads GGUF headers
    try:
        text = log_path.read_bytes()[-64 * 1024:].decode("utf-8", errors="replace")
    except OSError:
        return
    kv_dir = Path(entry.home) / "kv_cache" if entry.home else log_path.parent.parent / "kv_cache"
    line = explain_start_failure(text, kv_dir, Path(entry.model_path), entry.ctx, list(entry.argv))
    if line:
        raise DiskLLMError(f"{line} (log: {log_path})")


def log_tail(path: Path, n: int = 5) -> list[str]:
    """Last n meaningful lines of a server log."""
    try:
        data = path.read_bytes()[-64 * 1024:].decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = [ln.strip() for ln in data.splitlines() if not _NOISE.match(ln)]
    # When the server says why it failed, that beats its start-up chatter; the first
    # error is usually the cause, the ones after it are the same failure unwinding.
    errors = [ln for ln in lines if _ERRORISH.search(ln) or _LEVEL_E.match(ln)]
    if not errors:
        return lines[-n:]
    return [errors[0]] + errors[1:][-(n - 1):] if n > 1 else errors[:1]


async def start_server(
    home: Home,
    opts: ServerOptions,
    binary: Path,
    progress: Progress | None = None,
    *,
    timeout: float = 120.0,
) -> RunningServer:
    """Start llama-server, wait until /health says 200, register it."""
    home.ensure()
    async with _port_claim(home.run):
        port = pick_port(opts.host, opts.port, opts.port_explicit)
        argv = build_argv(home, opts, binary, port)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_path = home.logs / f"server-{_safe_name(opts.name)}-{port}-{stamp}.log"
        if progress:
            progress(f"starting llama-server on {opts.host}:{port} (log: {log_path})")
        # the log can hold prompts (verbose servers): owner-only, like sessions
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C in our terminal must not hit it directly
                )
            except OSError as e:
                raise DiskLLMError(f"cannot start {binary}: {e.strerror}") from None
        await _wait_bound(proc, opts.host, port)
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        create_time = 0.0
    ngl, counts = argv_split(argv)
    entry = ServerEntry(
        pid=proc.pid, port=port, host=opts.host, model=opts.name,
        model_path=str(opts.model_path), ctx=opts.ctx, kv_backend=opts.kv_backend,
        kv_window=opts.kv_window, binary=str(binary), log=str(log_path),
        started_at=time.time(), create_time=create_time, argv=argv, home=str(home.root),
        rpc=list(opts.rpc), ngl=ngl if opts.rpc else 0, tensor_split=counts,
    )
    server = RunningServer(entry, proc)
    try:
        await _wait_healthy(server, log_path, timeout, progress)
    except BaseException:
        _kill_now(proc)
        remove_dead_kv_files(home.kv_cache, proc.pid, wait=DEAD_LOCK_WAIT)  # an abort (e.g. a worker gone) skips the cleanup
        raise
    atomic_write_text(home.run / f"{proc.pid}.json", json.dumps(asdict(entry), indent=2))
    return server


@contextlib.asynccontextmanager
async def _port_claim(run_dir: Path) -> AsyncIterator[None]:
    """flock on run/port.lock from picking a port until the new server has bound it: two
    servers started at once (the daemon loading two models, `run` beside the daemon) would
    otherwise both find the same port free and share it. Polled, so it stays cancellable."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / "port.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)


async def _wait_bound(proc: subprocess.Popen, host: str, port: int, timeout: float = 30.0) -> None:
    """Until the server listens (llama-server binds before it loads the model), exits, or
    `timeout` passes; a server that never binds is reported by the health wait."""
    # connect, not bind: a probe bound to the port could race the server's own bind
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(_connect_host(host), port), 1.0)
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


async def _wait_healthy(server: RunningServer, log_path: Path, timeout: float, progress: Progress | None) -> None:
    proc = server.process
    assert proc is not None
    url = server.base_url + "/health"
    deadline = time.monotonic() + timeout
    said_loading = False
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            rc = proc.poll()
            if rc is not None:
                _raise_disk_full(server.entry, log_path)
                tail = " | ".join(log_tail(log_path)) or "no output"
                raise DiskLLMError(f"llama-server exited at start (code {rc}): {tail} (log: {log_path})")
            with contextlib.suppress(httpx.TransportError):
                r = await client.get(url)
                if r.status_code == 200:
                    return
                if r.status_code == 503 and progress and not said_loading:
                    progress("loading model...")
                    said_loading = True
            if time.monotonic() > deadline:
                tail = " | ".join(log_tail(log_path)) or "no output"
                raise DiskLLMError(f"llama-server not healthy after {timeout:.0f}s: {tail} (log: {log_path})")
            await asyncio.sleep(0.2)


def _kill_now(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def is_alive(entry: ServerEntry) -> bool:
    """The process runs: not gone, not a zombie, not a reused pid. A zombie counts as dead
    at once: after SIGKILL the main thread is a zombie while the other threads still unmap
    their memory, and waitpid() reports the exit only when they are done."""
    try:
        p = psutil.Process(entry.pid)
        if entry.create_time and abs(p.create_time() - entry.create_time) > 1.0:
            return False  # pid reused by another process
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _load_entry(path: Path) -> ServerEntry | None:
    try:
        return ServerEntry(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def list_servers(home: Home) -> list[ServerEntry]:
    """Running servers from the registry; entries of dead processes are removed."""
    out = []
    if not home.run.is_dir():
        return out
    for path in sorted(home.run.glob("*.json")):
        entry = _load_entry(path)
        if entry is None or not is_alive(entry):
            path.unlink(missing_ok=True)
            if entry is not None:
                remove_slot_locks(home.run, entry.base_url)
                remove_dead_kv_files(home.kv_cache, entry.pid)
            continue
        out.append(entry)
    return sorted(out, key=lambda e: e.started_at)


def _server_key(base_url: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", base_url.split("://", 1)[-1]).strip("_")


def slot_lock_path(run_dir: Path, base_url: str, slot_id: int) -> Path:
    """run/slot-HOST_PORT-SLOT.lock: held while a client uses the slot (core.sessions.locks)."""
    return run_dir / f"slot-{_server_key(base_url)}-{slot_id}.lock"


def remove_slot_locks(run_dir: Path, base_url: str) -> None:
    """Forget a stopped server's slots: a new server on the same port starts with empty
    slots, so "who used it last" must not carry over (and run/ is left clean)."""
    for path in run_dir.glob(f"slot-{_server_key(base_url)}-*.lock"):
        path.unlink(missing_ok=True)


def _entry_file(entry: ServerEntry) -> Path:
    root = Path(entry.home) if entry.home else Path(entry.log).parent.parent  # logs/ is in home
    return Home(root).run / f"{entry.pid}.json"


async def terminate(pid: int, alive: Callable[[], bool], grace: float, *, poll: float, what: str) -> None:
    """SIGTERM, SIGKILL if `alive()` still holds after `grace` seconds, then wait until it
    does not; `what` names the process in the one-line error when it is not ours to stop."""
    try:
        if alive():
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and alive():
                await asyncio.sleep(poll)
            if alive():
                proc.send_signal(signal.SIGKILL)
                while alive():
                    await asyncio.sleep(0.05)
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        raise DiskLLMError(f"not allowed to stop {what} {pid} (started by another user?)") from None


async def stop_server(entry: ServerEntry | RunningServer, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; remove the registry entry."""
    popen = entry.process if isinstance(entry, RunningServer) else None
    if isinstance(entry, RunningServer):
        entry = entry.entry
    # Unregister first: a `run --headless` watching this server takes a missing
    # entry to mean "stopped on purpose", not "crashed".
    _entry_file(entry).unlink(missing_ok=True)
    try:
        await terminate(entry.pid, lambda: is_alive(entry), grace, poll=0.1, what="pid")
    finally:
        if popen is not None:  # reap our own child
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)
        _entry_file(entry).unlink(missing_ok=True)
        remove_slot_locks(_entry_file(entry).parent, entry.base_url)
        if not is_alive(entry):  # SIGKILL (or an abort before it) leaves the KV files
            remove_dead_kv_files(_entry_file(entry).parent.parent / "kv_cache", entry.pid, wait=DEAD_LOCK_WAIT)


def forget_dead_server(entry: ServerEntry) -> list[Path]:
    """Everything a server that died on its own leaves: registry entry, slot locks, KV files
    (returned, removed)."""
    _entry_file(entry).unlink(missing_ok=True)
    remove_slot_locks(_entry_file(entry).parent, entry.base_url)
    return remove_dead_kv_files(_entry_file(entry).parent.parent / "kv_cache", entry.pid, wait=DEAD_LOCK_WAIT)


# Seconds a cleanup that knows the server is dead waits for its KV files' locks: an
# aborted server's main thread is a zombie while the others still exit and hold them.
DEAD_LOCK_WAIT = 10.0


def remove_dead_kv_files(kv_dir: Path, pid: int, wait: float = 0.0) -> list[Path]:
    """Remove the KV files (and paging stats) of server `pid` once nobody holds their lock.

    The patched server flocks each file and unlinks it on a clean exit; an abort or
    SIGKILL leaves it for the next server's start-up to clean. Doing it here means a
    crashed server's KV (possibly GBs, and conversation data) does not wait for that.
    `wait`: seconds to wait for a held lock, for callers that know `pid` is dead. Its
    main thread turns zombie while the other threads still exit, and the fd (with the
    lock) closes only after the last one."""
    removed: list[Path] = []
    deadline = time.monotonic() + wait
    for path in kv_files(kv_dir, pid):
        while True:
            try:
                with open(path, "rb") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held = still in use: leave it
                    path.unlink()
                    removed.append(path)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            except OSError:  # FileNotFoundError included: gone already
                break
    stats = Path(kv_dir) / f"diskllm-kv-{pid}-paging.json"
    if removed or not any(True for _ in kv_files(kv_dir, pid)):
        stats.unlink(missing_ok=True)
    return removed


# --- memory ---------------------------------------------------------------

@dataclass
class MemoryInfo:
    rss: int
    rss_anon: int  # private RAM
    rss_file: int
    rss_shmem: int
    vm_hwm: int


def memory_of(pid: int) -> MemoryInfo:
    """Memory counters from /proc/PID/status (psutil has no RssAnon/RssFile)."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    fields[key] = int(rest.split()[0]) * 1024
    except FileNotFoundError:
        raise DiskLLMError(f"no process {pid}") from None
    if "RssAnon" not in fields:  # very old kernels: derive it from psutil
        mi = psutil.Process(pid).memory_info()
        fields.setdefault("RssAnon", mi.rss - mi.shared)
        fields.setdefault("RssFile", mi.shared)
    return MemoryInfo(
        rss=fields.get("VmRSS", 0), rss_anon=fields.get("RssAnon", 0),
        rss_file=fields.get("RssFile", 0), rss_shmem=fields.get("RssShmem", 0),
        vm_hwm=fields.get("VmHWM", 0),
    )


def smaps_fields(pid: int) -> Iterator[tuple[str, str, list[str]]]:
    """(mapped file, field, values) for every field line of /proc/PID/smaps, e.g.
    ("/x.gguf", "Rss", ["1024", "kB"]); the file is "" for anonymous mappings and loses
    a " (deleted)" suffix."""
    path = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if "-" in parts[0] and not parts[0].endswith(":"):  # mapping header line
                head = line.split(None, 5)
                path = head[5].strip().removesuffix(" (deleted)") if len(head) > 5 else ""
            else:
                yield path, parts[0].removesuffix(":"), parts[1:]


def kv_mapping_resident(pid: int, kv_dir: Path) -> int:
    """Resident bytes of the mappings whose file lies under kv_dir (/proc/PID/smaps)."""
    prefix = str(Path(kv_dir).resolve()).rstrip("/") + "/"
    try:
        return sum(int(values[0]) * 1024 for path, key, values in smaps_fields(pid)
                   if key == "Rss" and path.startswith(prefix))
    except FileNotFoundError:
        return 0


def kv_files(kv_dir: Path, pid: int) -> list[Path]:
    """KV files of this server; the patch names them diskllm-kv-<pid>-<ctx>-<tag>.bin
    (diskllm-kv-<pid>-paging.json beside them is the paging stats file, not KV)."""
    d = Path(kv_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and f"-{pid}-" in p.name and p.suffix == ".bin")


@dataclass(frozen=True)
class PagingStats:
    """What the server's paging reports (patches/0006: diskllm-kv-<pid>-paging.json)."""
    active: bool                  # the working set does not fit: streaming or reading ahead
    budget: int                   # bytes of KV + weights it may keep resident
    budget_source: str            # "--kv-budget", "[parent ]cgroup memory.max" (v1: memory.limit_in_bytes), "MemAvailable"
    working_set: int              # bytes one decode step reads (filled KV + weights)
    resident: int                 # bytes kept resident
    streamed_per_token: int       # bytes released and read again every token
    read_per_second: float        # storage reads during compute
    read_path: str = ""           # "stream" or "faults" (patches/0010: whichever the server timed faster)
    faults_s_per_token: float = -1.0     # its last timing of each way (decode; -1 = not timed)
    streaming_s_per_token: float = -1.0
    margin: int = 0                      # bytes kept free because reclaim took part of the resident set
    large_folios: bool = False           # streamed blocks read as 2 MiB folios (patches/0016, 0021: chosen by the working set)
    read_per_token: float = 0.0          # storage bytes read per decode token (0 until measured)

    @property
    def more_ram_helps(self) -> int:
        """The least more RAM that stops the streaming: W - B, as `diskllm show` estimates it
        (the budget must cover W; the resident set is smaller by the room reads need)."""
        return max(0, self.working_set - self.budget)


def paging_stats(kv_dir: Path, pid: int) -> PagingStats | None:
    """The latest paging figures of server `pid`, or None (no file: older build or ram backend)."""
    path = Path(kv_dir) / f"diskllm-kv-{pid}-paging.json"
    for _ in range(3):  # rewritten in place: a torn read is retried
        try:
            d = json.loads(path.read_bytes().rstrip(b"\0 \n"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.01)
            continue
        return PagingStats(bool(d.get("active")), int(d.get("budget_bytes") or 0), str(d.get("budget_source", "")),
                           int(d.get("working_set_bytes") or 0), int(d.get("resident_bytes") or 0),
                           int(d.get("streamed_bytes_per_token") or 0), float(d.get("read_bytes_per_second") or 0),
                           str(d.get("read_path") or ""), float(d.get("seconds_per_token_faults", -1)),
                           float(d.get("seconds_per_token_streaming", -1)), int(d.get("margin_bytes") or 0),
                           bool(d.get("large_folios")), float(d.get("read_bytes_per_token") or 0))
    return None


def kv_disk_bytes(kv_dir: Path, pid: int) -> int:
    """Bytes actually allocated on disk (sparse files count only written blocks)."""
    total = 0
    for p in kv_files(kv_dir, pid):
        with contextlib.suppress(OSError):
            total += p.stat().st_blocks * 512
    return total
