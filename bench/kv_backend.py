"""KV backend benchmark (issue 3, issue 7): stock vs patched ram vs patched ssd.

For one model and context size, servers are started in turn (`--parallel 1
-ngl 0`, same threads), N tokens of real text are filled, then decode is timed
(median of several runs) and memory is read at that same fill: RssAnon,
RssFile, VmHWM, the KV mapping's resident bytes and the KV files' bytes on disk.

With --cap-fraction F the same is repeated inside a child memory cgroup capped
at F x (KV bytes at the fill + weights): who starts, who answers, decode tok/s,
bytes read from storage per token, and the disk's own read rates beside them.

    python -m bench.kv_backend --model smollm2 --ctx 32768 --fill 7000 --cap-fraction 0.5 0.25
    python -m bench.kv_backend --quick            # small sizes, a smoke run

Importable: run(model, ctx, fill, quick, ...) -> list[dict] (one dict per row).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from diskllm.bench.cgroup import CgroupUnavailable, MemoryCgroup
from diskllm.bench.machine import describe, disk_read_rates
from diskllm.core.build import ensure_server, server_supports_kv_flags
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.paths import Home
from diskllm.core.server import kv_disk_bytes, kv_mapping_resident, memory_of, paging_stats

Say = Callable[[str], None]

MODELS = ("smollm2", "gemma3", "qwen7b-geom", "hybrid", "qwen7b-full", "qwen7b-full-2l")
BACKENDS = ("stock", "ram", "ssd")
PAGE = os.sysconf("SC_PAGE_SIZE")
KV_WINDOW = 256  # what `diskllm run` passes by default (core.server.ServerOptions)


def resolve_model(name: str) -> Path:
    if name == "smollm2":
        from diskllm.testing.fetch import fetch_smollm2
        return fetch_smollm2()
    if name == "gemma3":
        from diskllm.testing.fetch import fetch_gemma3
        return fetch_gemma3()
    if name in ("qwen7b-geom", "qwen7b-geometry"):
        from diskllm.testing.synth import synthesize_qwen7b_geometry
        return synthesize_qwen7b_geometry()
    if name == "hybrid":
        from diskllm.testing.synth import synthesize_hybrid
        return synthesize_hybrid()
    if name in ("qwen7b-full", "qwen7b-full-2l"):  # Qwen2.5-7B's full matrices in Q4_K (3.9 GB; 2 layers 0.46 GB)
        from diskllm.testing.synth import synthesize_qwen7b_full
        return synthesize_qwen7b_full(2 if name.endswith("-2l") else 28)
    p = Path(name).expanduser()
    if p.is_file():
        return p
    raise SystemExit(f"error: unknown model {name!r} (one of {', '.join(MODELS)} or a .gguf path)")


TESTS_BUILD_CACHE = Path.home() / ".cache" / "diskllm" / "build"  # tests/conftest.py's default


def build_home() -> Home:
    """Where builds are cached: $DISKLLM_BUILD_CACHE, else the tests' shared cache if it
    exists (one build serves tests and benchmarks), else the user's home."""
    env = os.environ.get("DISKLLM_BUILD_CACHE")
    if not env and TESTS_BUILD_CACHE.is_dir():
        env = str(TESTS_BUILD_CACHE)
        os.environ["DISKLLM_BUILD_CACHE"] = env  # build_cache_dir() reads it
    if env:
        return Home(Path(env).expanduser() / ".home").ensure()
    return Home.from_env().ensure()


def binaries(stock: bool, say: Say, server: Path | None = None,
             stock_server: Path | None = None) -> dict[str, Path]:
    home = build_home()
    out = {}
    out["patched"] = server or asyncio.run(ensure_server(home, progress=say, use_override=False))
    if not server_supports_kv_flags(out["patched"]):
        raise SystemExit(f"error: {out['patched']} has no --kv-backend flag (not the patched build)")
    if stock:
        out["stock"] = stock_server or asyncio.run(ensure_server(home, stock=True, progress=say))
    return out


@dataclass
class Setup:
    """What every server of one benchmark run shares."""
    model: Path
    info: Any            # core.gguf_info.GGUFInfo
    ctx_override: str | None
    threads: int
    work: Path


def setup(model: str | Path, ctx: int, threads: int | None, work_dir: Path | None, prefix: str) -> Setup:
    """Resolve the model, raise its trained context to `ctx` if needed, make the work dir."""
    model_path = model if isinstance(model, Path) else resolve_model(str(model))
    info = read_gguf_info(model_path)
    ctx_override = None
    if info.context_length and ctx > info.context_length:
        ctx_override = f"{info.arch}.context_length=int:{ctx}"  # every backend alike
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR", "/var/tmp")))
    work.mkdir(parents=True, exist_ok=True)
    return Setup(model_path, info, ctx_override, threads or len(os.sched_getaffinity(0)), work)


# bytes per element of llama.cpp's KV cache types (block types: block bytes / 32 elements)
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                 "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}


def kv_type_bytes(flags: list[str] | tuple[str, ...] | None) -> float:
    """Mean bytes per KV element for the -ctk/-ctv in `flags` (f16 when absent)."""
    flags = list(flags or [])
    types = []
    for names in (("-ctk", "--cache-type-k"), ("-ctv", "--cache-type-v")):
        t = next((flags[i + 1] for i, f in enumerate(flags[:-1]) if f in names), "f16")
        types.append(KV_TYPE_BYTES.get(t.lower(), 2.0))
    return sum(types) / 2


def bench_parser(prog: str, doc: str | None, *, ctx: int, fill: int,
                 model: str | None = "smollm2") -> argparse.ArgumentParser:
    """The flags every server benchmark shares; each module adds its own."""
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=(doc or "").split("\n\n")[0])
    if model is not None:
        ap.add_argument("--model", default=model, help=f"{', '.join(MODELS)} or a .gguf path")
    ap.add_argument("--ctx", type=int, default=ctx)
    ap.add_argument("--fill", type=int, default=fill, help="tokens of real text filled before decoding")
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run (not for quoting)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--runs", type=int, help="decode runs (median)")
    ap.add_argument("--n-predict", type=int, help="tokens per decode run")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--work-dir", type=Path, help="kv files, logs and test files (kept); default: a temp dir")
    return ap


def say_stderr(line: str) -> None:
    """Progress goes to stderr so stdout carries only the table."""
    print(line, file=sys.stderr, flush=True)


def emit(rows: list[dict], json_path: Path | None, text: str) -> int:
    """CLI tail shared by the bench modules: rows to JSON if asked, the table to stdout."""
    if json_path:
        json_path.write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


# --- the text we fill with --------------------------------------------------

def real_text(min_chars: int) -> str:
    """English prose and code from the Python standard library's own sources (always present)."""
    import inspect
    import email, http.client, json as _json, logging, unittest, textwrap, pathlib  # noqa: E401
    parts: list[str] = []
    for mod in (argparse, logging, http.client, email, _json, unittest, textwrap, pathlib, inspect):
        src = Path(inspect.getsourcefile(mod) or "")
        if src.is_file():
            parts.append(src.read_text(errors="replace"))
        if sum(map(len, parts)) >= min_chars:
            break
    text = "\n\n".join(parts)
    while len(text) < min_chars:
        text += "\n\n" + text
    return text


# --- one server ---------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _read_io(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = int(v)
    except OSError:
        pass
    return out


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    argv: list[str]
    log: Path
    kv_dir: Path | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 3) -> str:
        try:
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_argv(binary: Path, backend: str, model: Path, ctx: int, threads: int, port: int,
                kv_dir: Path | None, ctx_override: str | None, extra: list[str],
                kv_window: int = KV_WINDOW) -> list[str]:
    argv = [str(binary), "-m", str(model), "-c", str(ctx), "-ngl", "0", "--parallel", "1",
            "-t", str(threads), "--host", "127.0.0.1", "--port", str(port)]
    if backend in ("ram", "ssd"):
        argv += ["--kv-backend", backend]
    if backend == "ssd":
        argv += ["--kv-path", str(kv_dir), "--kv-window", str(kv_window)]
    if ctx_override:
        argv += ["--override-kv", ctx_override]
    return argv + list(extra)


def start(argv: list[str], log: Path, kv_dir: Path | None, cgroup: MemoryCgroup | None,
          timeout: float, env: dict[str, str] | None = None) -> tuple[Server, str | None]:
    """Start and wait for /health. Returns (server, None) or (server, why it did not start)."""
    port = int(argv[argv.index("--port") + 1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env} if env else None,
                                preexec_fn=cgroup.preexec if cgroup else None)
    srv = Server(proc, port, argv, log, kv_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not srv.alive():
            return srv, f"exited with {_exit_text(proc.returncode)}"
        try:
            with urllib.request.urlopen(srv.url + "/health", timeout=2) as r:
                if r.status == 200:
                    return srv, None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    srv.stop()
    return srv, f"not healthy after {timeout:.0f} s"


def real_prompt(url: str, fill: int) -> list[int]:
    """Real text tokenized by the server at `url` and cut to exactly `fill` tokens."""
    toks = _post(url + "/tokenize", {"content": real_text(fill * 6)}, 120)["tokens"]
    if len(toks) < fill:
        raise RuntimeError(f"only {len(toks)} tokens of text")
    return toks[:fill]


def _exit_text(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


# --- one row ------------------------------------------------------------------

def path_note(r: dict[str, Any]) -> str:
    """The read path a paging ssd server was on after its last run, and what it timed (patches/0010)."""
    paths = r.get("read_paths") or []
    if not paths or not paths[-1]:
        return ""
    t = r.get("timed_s_per_token") or {}
    timed = ", ".join(f"{k} {v:.2f}" for k, v in (("faults", t.get("faults", -1)), ("streaming", t.get("stream", -1)))
                      if v is not None and v > 0)
    margin = r.get("paging_margin") or 0
    return (f"on {'plain faults' if paths[-1] == 'faults' else 'streaming'}" + (f" (timed {timed} s/token)" if timed else "")
            + (f", margin {margin / 2**20:.0f} MiB" if margin else ""))


SUFFIX = "@baseline"  # a variant run on --baseline-server (the old design) instead


def require_baseline(baseline: Path | None, variants: list[str] | tuple[str, ...]) -> None:
    """Stop before any work if a NAME@baseline variant has no --baseline-server."""
    if baseline is None and any(v.endswith(SUFFIX) for v in variants):
        raise SystemExit(f"error: the {SUFFIX} variants need --baseline-server")


def variant_binary(variant: str, binary: Path, baseline: Path | None) -> tuple[str, Path]:
    """(NAME, the server to run it on): NAME@baseline runs on the baseline server."""
    name = variant.removesuffix(SUFFIX)
    return name, (baseline or binary) if name != variant else binary


class Bench:
    """One backend's server through its phases: start, fill, decode runs, memory, stop."""

    def __init__(self, backend: str, binary: Path, model: Path, ctx: int, fill: int, *, threads: int,
                 ctx_override: str | None, n_predict: int, work: Path, say: Say,
                 cap: int | None = None, cap_fraction: float | None = None,
                 extra: list[str] | None = None, timeout: float = 900, slow_run: float = 240,
                 kv_window: int = KV_WINDOW, env: dict[str, str] | None = None, label: str | None = None,
                 cap_on_parent: bool = False) -> None:
        self.backend, self.fill, self.n_predict, self.say, self.timeout = backend, fill, n_predict, say, timeout
        self.slow_run = slow_run
        self.row: dict[str, Any] = {"backend": backend, "model": model.name, "ctx": ctx, "fill": fill,
                                    "threads": threads, "cap_fraction": cap_fraction, "cap_bytes": cap,
                                    "started": False, "answered": False, "loadavg": [os.getloadavg()[0]]}
        self.kv_dir = work / f"kv-{label or backend}" if backend == "ssd" else None
        if self.kv_dir:
            self.kv_dir.mkdir(parents=True, exist_ok=True)
        self.argv = server_argv(binary, backend, model, ctx, threads, _free_port(), self.kv_dir,
                                ctx_override, extra or [], kv_window)
        self.row["command"] = " ".join(self.argv)
        self.env = env
        self.label = label or backend
        self.row["variant"] = self.label
        if env:
            self.row["command"] = " ".join(f"{k}={v}" for k, v in env.items()) + " " + self.row["command"]
        self.log = work / f"{self.label}-{cap_fraction or 'free'}.log"
        self.cap = cap
        self.cap_on_parent = cap_on_parent  # the cap on a parent, the server in an unlimited child (a slice's limit)
        self.cg: MemoryCgroup | None = None
        self.parent_cg: MemoryCgroup | None = None
        self.srv: Server | None = None
        self.prompt: list[int] = []
        self.tps: list[float] = []
        self.reads: list[dict] = []
        self.phase = "starting"

    @property
    def ok(self) -> bool:
        return "error" not in self.row

    def _fail(self, e: BaseException | str) -> None:
        if self.srv is not None:
            try:  # a killed server may not be reaped yet
                self.srv.proc.wait(3)
            except subprocess.TimeoutExpired:
                pass
        died = self.srv is not None and not self.srv.alive()
        msg = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
        self.row["error"] = (f"server died ({_exit_text(self.srv.proc.returncode)}) while {self.phase}"
                             if died else f"{msg} while {self.phase}")
        self.say(f"  {self.label}: {self.row['error']}")

    def start(self) -> None:
        if self.cap is not None:
            try:
                if self.cap_on_parent:
                    self.parent_cg = MemoryCgroup(self.cap)
                    self.cg = MemoryCgroup(None, inside=self.parent_cg)
                else:
                    self.cg = MemoryCgroup(self.cap)
            except CgroupUnavailable as e:
                if self.parent_cg:
                    self.parent_cg.close()
                self.row["error"] = f"skipped: {e}"
                self.say(f"  {self.label}: memory cap skipped: {e}")
                return
            self.row["cgroup"] = str(self.cg.path)
        t0 = time.monotonic()
        self.srv, why = start(self.argv, self.log, self.kv_dir, self.cg, timeout=180, env=self.env)
        self.row["load_seconds"] = time.monotonic() - t0
        if why:
            self.row["error"] = f"did not start: {why}"
            self.row["log_tail"] = self.srv.log_tail()
            self.row["exit"] = _exit_text(self.srv.proc.returncode)
            self.say(f"  {self.label}: {self.row['error']}")
            return
        self.row["started"] = True
        self.row["pid"] = self.srv.proc.pid

    def fill_prompt(self) -> None:
        if not self.ok:
            return
        self.phase = "filling"
        try:
            self.prompt = real_prompt(self.srv.url, self.fill)
            self.say(f"  {self.label}: filling {self.fill} tokens")
            r = _post(self.srv.url + "/completion", {"prompt": self.prompt, "n_predict": 1, "temperature": 0,
                                                     "cache_prompt": True}, self.timeout)
            t = r.get("timings", {})
            self.row["prefill_tokens"] = t.get("prompt_n")
            self.row["prefill_tps"] = t.get("prompt_per_second")
        except Exception as e:  # noqa: BLE001 - a benchmark row reports what went wrong
            self._fail(e)

    def decode_once(self, i: int, runs: int) -> None:
        if not self.ok or self.row.get("runs_cut"):
            return
        self.phase = "decoding"
        try:
            pid = self.srv.proc.pid
            io0, cg0 = _read_io(pid), (self.cg.stat() if self.cg else {})
            r = _post(self.srv.url + "/completion", {"prompt": self.prompt, "n_predict": self.n_predict,
                                                     "temperature": 0, "ignore_eos": True, "cache_prompt": True,
                                                     "seed": 1}, self.timeout)
            io1, cg1 = _read_io(pid), (self.cg.stat() if self.cg else {})
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return
        t = r.get("timings", {})
        n = t.get("predicted_n") or 0
        self.tps.append(t.get("predicted_per_second") or 0.0)
        self._note_paging(pid)
        if n:
            self.reads.append({
                "read_bytes_per_token": (io1.get("read_bytes", 0) - io0.get("read_bytes", 0)) / n,
                "majfault_per_token": (cg1.get("pgmajfault", 0) - cg0.get("pgmajfault", 0)) / n,
                # file pages the cgroup's reclaim evicted and that were read again: a sign the
                # cap was hit (the budget's own drop-behind leaves no such trace); not all of it
                # is extra reading, since a consumed page reclaim took would be read next token anyway
                "refault_bytes_per_token": (cg1.get("workingset_refault_file", 0)
                                            - cg0.get("workingset_refault_file", 0)) * PAGE / n,
            })
        if n and self.tps[-1] and n / self.tps[-1] > self.slow_run and i + 1 < runs:
            self.row["runs_cut"] = f"stopped after {i + 1} run(s): one run took {n / self.tps[-1]:.0f} s"
        io_note = (f", read {self.reads[-1]['read_bytes_per_token'] / 1e6:.0f} MB/token"
                   f" ({self.reads[-1]['refault_bytes_per_token'] / 1e6:.0f} refaulted)" if n and self.cg else "")
        self.say(f"  {self.label}: decode run {i + 1}/{runs}: {self.tps[-1]:.2f} tok/s ({n} tokens, "
                 f"prompt re-evaluated {t.get('prompt_n')}{io_note}, load {os.getloadavg()[0]:.1f})")

    def _note_paging(self, pid: int) -> None:
        """What the server's paging chose and timed (its stats file), while it runs."""
        st = paging_stats(self.kv_dir, pid) if self.kv_dir else None
        if st is None or not st.active:
            return
        self.row.setdefault("read_paths", []).append(st.read_path)  # after each run
        self.row["timed_s_per_token"] = {"faults": st.faults_s_per_token, "stream": st.streaming_s_per_token}
        self.row["paging_margin"] = st.margin

    def finish(self) -> dict[str, Any]:
        row, srv = self.row, self.srv
        try:
            if self.tps and srv is not None and (self.ok or srv.alive()):
                row["answered"] = True  # at least one decode run completed; a later failure stays in "error"
                row["decode_runs"] = self.tps
                row["decode_tps"] = statistics.median(self.tps)
                rb = statistics.median(x["read_bytes_per_token"] for x in self.reads) if self.reads else 0
                row["read_bytes_per_token"] = rb
                row["kv_read_Bps"] = rb * row["decode_tps"]  # storage reads per second of decode
                if self.cg:
                    row["majfault_per_token"] = statistics.median(x["majfault_per_token"] for x in self.reads)
                    row["refault_bytes_per_token"] = statistics.median(x["refault_bytes_per_token"] for x in self.reads)
                mem = memory_of(srv.proc.pid)
                row.update(rss_anon=mem.rss_anon, rss_file=mem.rss_file, vm_hwm=mem.vm_hwm)
                row["kv_resident"] = kv_mapping_resident(srv.proc.pid, self.kv_dir) if self.kv_dir else None
                row["kv_disk"] = kv_disk_bytes(self.kv_dir, srv.proc.pid) if self.kv_dir else None
        except Exception as e:  # noqa: BLE001
            self._fail(e)
        finally:
            row["loadavg"].append(os.getloadavg()[0])
            if self.cg:
                row["cgroup_peak"] = self.cg.peak()
                row["oom_kills"] = (self.parent_cg or self.cg).oom_kills()  # (a parent's limit: its OOM)
            if srv:
                srv.stop()
                row.setdefault("exit", _exit_text(srv.proc.returncode))
            for cg in (self.cg, self.parent_cg):  # the child first
                try:
                    if cg:
                        cg.close()
                except OSError as e:
                    self.say(f"  warning: could not remove {cg.path}: {e}")
            if self.kv_dir:
                shutil.rmtree(self.kv_dir, ignore_errors=True)
        if row.get("oom_kills"):
            row["oom_killed"] = True
        return row


def measure_interleaved(benches: list[Bench], runs: int,
                        before_finish: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """All servers up at once, filled in turn, decode runs round-robin (a shared, noisy
    machine then slows every backend alike); memory read at the end, at the same fill.
    before_finish runs while the servers are still up (e.g. to read their helpers)."""
    try:
        for b in benches:
            b.start()
        for b in benches:
            b.fill_prompt()
        for i in range(runs):
            for b in benches:
                b.decode_once(i, runs)
        if before_finish is not None:
            before_finish()
    finally:
        rows = [b.finish() for b in benches]
    return rows


def measure(*args: Any, runs: int, **kw: Any) -> dict[str, Any]:
    """One backend alone (used for the memory-cap rows)."""
    return measure_interleaved([Bench(*args, **kw)], runs)[0]


def run(model: str | Path = "smollm2", ctx: int = 32768, fill: int = 7000, quick: bool = False, *,
        stock: bool = True, cap_fractions: tuple[float, ...] | list[float] = (),
        threads: int | None = None, runs: int | None = None, n_predict: int | None = None,
        disk_rates: bool | None = None, server: Path | None = None, stock_server: Path | None = None,
        extra: list[str] | None = None, work_dir: Path | None = None, say: Say = print,
        kv_window: int = KV_WINDOW, backends: tuple[str, ...] | list[str] | None = None,
        cap_base: str = "fill", uncapped: bool = True) -> list[dict]:
    """Run the benchmark; one dict per row (kind 'backend', 'cap' or 'disk', plus one 'machine').
    uncapped=False skips the side-by-side run without a cap (only the capped rows)."""
    if quick:
        ctx, fill = min(ctx, 4096), min(fill, 1000)
    runs = runs or (3 if quick else 5)
    n_predict = n_predict or (16 if quick else 64)
    s = setup(model, ctx, threads, work_dir, "diskllm-bench-")
    model_path, info, ctx_override, threads, work = s.model, s.info, s.ctx_override, s.threads, s.work
    bins = binaries(stock, say, server, stock_server)
    rows: list[dict] = [{"kind": "machine", **describe(work), "model": model_path.name,
                         "model_bytes": info.file_size, "kv_bytes_per_token": info.kv_bytes_per_token(),
                         "binaries": {k: str(v) for k, v in bins.items()}, "quick": quick,
                         "runs": runs, "n_predict": n_predict}]
    order = [b for b in (backends or BACKENDS) if b != "stock" or stock]
    common = dict(threads=threads, ctx_override=ctx_override, work=work, say=say, extra=extra, kv_window=kv_window)
    try:
        if uncapped:
            say(f"{', '.join(order)}: {model_path.name} -c {ctx}, fill {fill} (servers side by side, decode round-robin)")
            benches = [Bench(b, bins["stock" if b == "stock" else "patched"], model_path, ctx, fill,
                             n_predict=n_predict, **common) for b in order]
            rows += [{"kind": "backend", **r} for r in measure_interleaved(benches, runs)]
        if cap_fractions:
            per_token = info.kv_bytes_per_token(kv_type_bytes(extra))
            kv_at_fill = per_token * fill
            if cap_base == "ctx":  # issue 7: a fraction of the KV size of the whole context
                base, base_text = per_token * ctx, "KV of the whole context"
            else:  # a fraction of what one decode step touches: KV at the fill + weights
                base, base_text = kv_at_fill + info.file_size, "KV at the fill + weights"
            for f in cap_fractions:
                cap = int(f * base)
                for b in order:
                    say(f"{b} under a {cap / 2**20:.0f} MiB cap ({f:g} x {base_text} {base / 2**20:.0f} MiB)")
                    rows.append({"kind": "cap", **measure(
                        b, bins["stock" if b == "stock" else "patched"], model_path, ctx, fill,
                        runs=max(3, runs - 2), n_predict=min(n_predict, 32), cap=cap, cap_fraction=f, **common),
                        "cap_base": cap_base})
        if disk_rates if disk_rates is not None else bool(cap_fractions):
            say("disk read rates (O_DIRECT, fresh file)")
            rows.append({"kind": "disk", **disk_read_rates(work, 256 if quick else 1024)})
    finally:
        if not work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return rows


# --- printing -----------------------------------------------------------------

def _mb(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.0f}"


def _f(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _ratio(a: Any, b: Any) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def table(rows: list[dict]) -> str:
    """Markdown tables: backends with ssd/ram and ssd/stock ratios, caps, disk."""
    out = []
    m = next((r for r in rows if r["kind"] == "machine"), {})
    be = {r["backend"]: r for r in rows if r["kind"] == "backend"}
    if be:
        any_row = next(iter(be.values()))
        out.append(f"{m.get('model')} -c {any_row['ctx']}, {any_row['fill']} tokens filled, "
                   f"{any_row['threads']} threads, decode = median of {m.get('runs')} x {m.get('n_predict')} tokens")
        out.append("")
        out.append("| backend | prefill tok/s | decode tok/s | RssAnon MB | RssFile MB | VmHWM MB | KV resident MB | KV on disk MB |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for b, r in be.items():
            if not r.get("answered"):
                out.append(f"| {b} | {r.get('error', 'failed')} ||||||| ")
                continue
            out.append(f"| {b} | {_f(r.get('prefill_tps'), '.0f')} | {_f(r.get('decode_tps'))} | {_mb(r.get('rss_anon'))} "
                       f"| {_mb(r.get('rss_file'))} | {_mb(r.get('vm_hwm'))} | {_mb(r.get('kv_resident'))} | {_mb(r.get('kv_disk'))} |")
        ssd = be.get("ssd", {})
        for ref in ("ram", "stock"):
            if ref in be and ssd.get("answered") and be[ref].get("answered"):
                r = be[ref]
                out.append(f"| **ssd/{ref}** | {_ratio(ssd.get('prefill_tps'), r.get('prefill_tps'))} "
                           f"| {_ratio(ssd.get('decode_tps'), r.get('decode_tps'))} "
                           f"| {_ratio(ssd.get('rss_anon'), r.get('rss_anon'))} | {_ratio(ssd.get('rss_file'), r.get('rss_file'))} "
                           f"| {_ratio(ssd.get('vm_hwm'), r.get('vm_hwm'))} | | |")
    caps = [r for r in rows if r["kind"] == "cap"]
    if caps:
        out.append("")
        out.append("| cap | backend | started | answered | decode tok/s | read from storage / token | storage read rate (weights + KV) | cgroup peak MB | what happened |")
        out.append("|---|---|---|---|---:|---:|---:|---:|---|")
        for r in caps:
            what = "; ".join(x for x in (r.get("runs_cut"), r.get("error")) if x) or "answered"
            if r.get("answered") and r.get("error"):
                what = f"answered {len(r.get('decode_runs', []))} run(s), then: {what}"
            if r.get("oom_kills"):
                what = f"OOM-killed in the cgroup: {what}"
            out.append(f"| {r['cap_fraction']:g} x = {_mb(r['cap_bytes'])} MB | {r['backend']} | {'yes' if r['started'] else 'no'} "
                       f"| {'yes' if r['answered'] else 'no'} | {_f(r.get('decode_tps'), '.2f')} "
                       f"| {_mb(r.get('read_bytes_per_token'))} MB | {_f((r.get('kv_read_Bps') or 0) / 1e6, '.0f') if r.get('answered') else '-'} MB/s "
                       f"| {_mb(r.get('cgroup_peak'))} | {what.replace('|', '/')[:120]} |")
    for d in (r for r in rows if r["kind"] == "disk"):
        out.append("")
        out.append(f"Disk, same run ({d['test_file_mib']} MiB fresh file, O_DIRECT): sequential 1 MiB reads "
                   f"{d['seq_read_Bps'] / 1e6:.0f} MB/s; random 4 KiB reads {d['rand4k_read_Bps'] / 1e6:.0f} MB/s "
                   f"({d['rand4k_iops']:.0f} IOPS)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("bench.kv_backend", __doc__, ctx=32768, fill=7000)
    ap.add_argument("--stock", action=argparse.BooleanOptionalAction, default=True,
                    help="include the stock (unpatched) build; built on first use (~5 min)")
    ap.add_argument("--cap-fraction", type=float, nargs="*", default=[],
                    help="memory-cap runs at F x (KV at fill + weights), e.g. 0.5 0.25")
    ap.add_argument("--cap-base", choices=("fill", "ctx"), default="fill",
                    help="cap = F x (KV at the fill + weights) [fill], or F x KV of the whole context [ctx]")
    ap.add_argument("--kv-window", type=int, default=KV_WINDOW, help="--kv-window for the ssd server (default: as diskllm run)")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, help="subset of backends (default: all)")
    ap.add_argument("--server", type=Path, help="patched llama-server to use instead of the cached build")
    ap.add_argument("--stock-server", type=Path, help="stock llama-server to use instead of the cached build")
    ap.add_argument("--uncapped", action=argparse.BooleanOptionalAction, default=True,
                    help="the side-by-side run without a cap (--no-uncapped: capped rows only)")
    ap.add_argument("--disk", action=argparse.BooleanOptionalAction, default=None,
                    help="measure disk read rates (default: with caps)")
    ap.add_argument("extra", nargs="*", help="after --: extra llama-server flags for every server")
    a = ap.parse_args(argv)
    rows = run(a.model, a.ctx, a.fill, a.quick, stock=a.stock, cap_fractions=tuple(a.cap_fraction),
               threads=a.threads, runs=a.runs, n_predict=a.n_predict, disk_rates=a.disk, server=a.server,
               stock_server=a.stock_server, extra=a.extra, work_dir=a.work_dir,
               kv_window=a.kv_window, backends=a.backends, cap_base=a.cap_base, uncapped=a.uncapped,
               say=say_stderr)
    m = rows[0]
    print("machine: " + "; ".join(f"{k} {m[k]}" for k in ("cpu", "cores", "ram", "disk", "kernel", "llama.cpp")))
    return emit(rows, a.json, table(rows))


if __name__ == "__main__":
    sys.exit(main())
