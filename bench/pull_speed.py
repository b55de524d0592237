"""Pull throughput (issue 7): `diskllm pull` vs a plain `curl` of the same blob.

A local server speaking the Ollama registry protocol (bench/localhub.py, the one the
tests use) serves one GGUF file from its own process (in the client's process it would
share the GIL with the pull and not with curl). Alternating, N times each:
- DiskLLM: core.pull.pull(...) into a fresh home: manifest, redirect, streamed download
  with sha256 computed on the fly, GGUF header check, registration;
- curl: `curl -sSfL -o FILE` of the same blob URL (follows the same redirect; no checks);
- curl + sha256sum: the same, then `sha256sum FILE`: the integrity check a pull makes.
Two links: loopback as fast as it goes (what the client itself costs in CPU), and the
server paced at 1 Gbit/s (125 MB/s), a fast real network. Reported: median MB/s of each
and the ratio (target: pull >= 0.9 x curl).

The file is SmolLM2's GGUF followed by random bytes up to the size asked for (1 GiB by
default: real models are GBs, so the fixed cost of a pull does not dominate); the pull
reads the GGUF header, not the tail.

    python -m bench.pull_speed                  # 1 GiB, 5 runs each, both links
    python -m bench.pull_speed --quick          # 256 MiB, 2 runs each

Importable: run(quick) -> list[dict].
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from diskllm.bench.kv_backend import emit
from diskllm.bench.localhub import Blob, FakeHub, FakeHubServer
from diskllm.core.paths import Home
from diskllm.core.pull import pull
from diskllm.testing.fetch import fetch_smollm2

Say = Callable[[str], None]
REF = "library/bench:gguf"
LINKS = {"loopback": None, "1 Gbit/s": 125e6}


def make_blob(dest: Path, size: int) -> Path:
    """A valid GGUF (SmolLM2) padded with random bytes to `size`."""
    src = fetch_smollm2()
    with open(src, "rb") as fi, open(dest, "wb") as fo:
        shutil.copyfileobj(fi, fo, 8 << 20)
        left = size - src.stat().st_size
        while left > 0:
            n = min(left, 8 << 20)
            fo.write(os.urandom(n))
            left -= n
    return dest


def _serve(path: Path, rate: float | None, conn: Any) -> None:
    hub = FakeHub(rate=rate)
    digest = hub.add_ollama_model(REF, Blob(path=path))
    with FakeHubServer(hub):
        conn.send((hub.url, digest))
        conn.recv()  # until the parent says stop


@contextlib.contextmanager
def hub_process(path: Path, rate: float | None) -> Iterator[tuple[str, str]]:
    """(url, model digest) of a local registry serving `path` from a child process."""
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_serve, args=(path, rate, child), daemon=True)
    proc.start()
    try:
        yield parent.recv()
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def _home(root: Path, url: str) -> Home:
    h = Home(root)
    h.root.mkdir(parents=True)
    h.config_file.write_text(f'[registry]\nollama_url = "{url}"\nconnect_timeout = 5\n')
    return h


def _pull_once(work: Path, url: str, i: int) -> float:
    home = _home(work / f"home-{i}", url)
    os.sync()  # start each timed run with no earlier run's dirty pages being written back
    t0 = time.perf_counter()
    asyncio.run(pull(home, REF, source="ollama"))
    dt = time.perf_counter() - t0
    shutil.rmtree(home.root, ignore_errors=True)
    return dt


def _curl_once(work: Path, blob_url: str, i: int, verify: bool = False) -> float:
    """curl the blob to a file; with `verify`, then sha256sum it (the check a pull does)."""
    out = work / f"curl-{i}.bin"
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sSfL", "-o", str(out), blob_url], check=True)
    if verify:
        subprocess.run(["sha256sum", str(out)], check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    out.unlink(missing_ok=True)
    return dt


def run(quick: bool = False, *, size_mib: int | None = None, runs: int | None = None,
        say: Say = print) -> list[dict[str, Any]]:
    size_mib = size_mib or (256 if quick else 1024)
    runs = runs or (2 if quick else 5)
    if not shutil.which("curl"):
        return [{"kind": "pull", "link": "-", "error": "curl not found: no reference to compare with"}]
    work = Path(tempfile.mkdtemp(prefix="diskllm-pull-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    rows = []
    try:
        path = make_blob(work / "blob.gguf", size_mib << 20)
        size = path.stat().st_size
        ns, rest = REF.split("/", 1)
        for link, rate in LINKS.items():
            with hub_process(path, rate) as (url, digest):
                blob_url = f"{url}/v2/{ns}/{rest.split(':')[0]}/blobs/{digest}"
                ours, theirs, verified = [], [], []
                for i in range(runs):  # alternate, so background load hits all alike
                    ours.append(_pull_once(work, url, i))
                    theirs.append(_curl_once(work, blob_url, i))
                    verified.append(_curl_once(work, blob_url, i, verify=True))
                    say(f"  {link} run {i + 1}/{runs}: diskllm {size / ours[-1] / 1e6:.0f} MB/s, "
                        f"curl {size / theirs[-1] / 1e6:.0f} MB/s, "
                        f"curl+sha256sum {size / verified[-1] / 1e6:.0f} MB/s")
                t_ours, t_curl, t_ver = (statistics.median(ours), statistics.median(theirs),
                                         statistics.median(verified))
                rows.append({
                    "kind": "pull", "link": link, "rate": rate, "bytes": size, "runs": runs,
                    "diskllm_s": ours, "curl_s": theirs, "curl_sha_s": verified,
                    "diskllm_Bps": size / t_ours, "curl_Bps": size / t_curl, "curl_sha_Bps": size / t_ver,
                    "ratio": t_curl / t_ours, "ratio_verified": t_ver / t_ours,
                    "command": f"python -m bench.pull_speed --size-mib {size_mib} --runs {runs}",
                })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| link | file MB | diskllm pull MB/s | curl MB/s | curl + sha256sum MB/s "
           "| pull / curl | pull / (curl + sha256sum) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['link']} | | | | | | {r['error']} |")
            continue
        ver = r.get("curl_sha_Bps")
        ver_mb, ver_ratio = (f"{ver / 1e6:.0f}", f"{r['ratio_verified']:.2f}") if ver else ("-", "-")
        out.append(f"| {r['link']} | {r['bytes'] / 1e6:.0f} | {r['diskllm_Bps'] / 1e6:.0f} "
                   f"| {r['curl_Bps'] / 1e6:.0f} | {ver_mb} | {r['ratio']:.2f} | {ver_ratio} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pull_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size-mib", type=int)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rows = run(a.quick, size_mib=a.size_mib, runs=a.runs, say=lambda s: print(s, file=sys.stderr, flush=True))
    return emit(rows, a.json, table(rows))


if __name__ == "__main__":
    sys.exit(main())
