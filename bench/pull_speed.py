"""Pull throughput (issue 7): `diskllm pull` vs a plain `curl` of the same blob.

A local server speaking the Ollama registry protocol (bench/localhub.py, the one the
tests use) serves one GGUF file. Alternating, N times each:
- DiskLLM: core.pull.pull(...) into a fresh home: manifest, redirect, streamed download
  with sha256 computed on the fly, GGUF header check, registration;
- curl: `curl -sSfL -o FILE` of the same blob URL (follows the same redirect; no checks).
Two links: loopback as fast as it goes (what the client itself costs in CPU), and the
server paced at 1 Gbit/s (125 MB/s), a fast real network. Reported: median MB/s of each
and the ratio (target: pull >= 0.9 x curl).

The file is SmolLM2's GGUF followed by random bytes up to the size asked for (1 GiB by
default: real models are GBs, so the fixed cost of a pull does not dominate); the pull
reads the GGUF header, not the tail.

    python -m bench.pull_speed                  # 1 GiB, 3 runs each, both links
    python -m bench.pull_speed --quick          # 256 MiB, 2 runs each

Importable: run(quick) -> list[dict].
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from diskllm.bench.localhub import Blob, FakeHub, FakeHubServer
from diskllm.core.paths import Home
from diskllm.core.pull import pull
from diskllm.core.testmodels import fetch_smollm2

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


def _home(root: Path, url: str) -> Home:
    h = Home(root)
    h.root.mkdir(parents=True)
    h.config_file.write_text(f'[registry]\nollama_url = "{url}"\nconnect_timeout = 5\n')
    return h


def _pull_once(work: Path, url: str, i: int) -> float:
    home = _home(work / f"home-{i}", url)
    t0 = time.perf_counter()
    asyncio.run(pull(home, REF, source="ollama"))
    dt = time.perf_counter() - t0
    shutil.rmtree(home.root, ignore_errors=True)
    return dt


def _curl_once(work: Path, blob_url: str, i: int) -> float:
    out = work / f"curl-{i}.bin"
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sSfL", "-o", str(out), blob_url], check=True)
    dt = time.perf_counter() - t0
    out.unlink(missing_ok=True)
    return dt


def run(quick: bool = False, *, size_mib: int | None = None, runs: int | None = None,
        say: Say = print) -> list[dict[str, Any]]:
    size_mib = size_mib or (256 if quick else 1024)
    runs = runs or (2 if quick else 3)
    if not shutil.which("curl"):
        return [{"kind": "pull", "link": "-", "error": "curl not found: no reference to compare with"}]
    work = Path(tempfile.mkdtemp(prefix="diskllm-pull-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    rows = []
    try:
        path = make_blob(work / "blob.gguf", size_mib << 20)
        size = path.stat().st_size
        hub = FakeHub()
        digest = hub.add_ollama_model(REF, Blob(path=path))
        with FakeHubServer(hub):
            ns, rest = REF.split("/", 1)
            blob_url = f"{hub.url}/v2/{ns}/{rest.split(':')[0]}/blobs/{digest}"
            for link, rate in LINKS.items():
                hub.rate = rate
                ours, theirs = [], []
                for i in range(runs):  # alternate, so background load hits both alike
                    ours.append(_pull_once(work, hub.url, i))
                    theirs.append(_curl_once(work, blob_url, i))
                    say(f"  {link} run {i + 1}/{runs}: diskllm {size / ours[-1] / 1e6:.0f} MB/s, "
                        f"curl {size / theirs[-1] / 1e6:.0f} MB/s")
                t_ours, t_curl = statistics.median(ours), statistics.median(theirs)
                rows.append({
                    "kind": "pull", "link": link, "rate": rate, "bytes": size, "runs": runs,
                    "diskllm_s": ours, "curl_s": theirs, "diskllm_Bps": size / t_ours, "curl_Bps": size / t_curl,
                    "ratio": t_curl / t_ours,
                    "command": f"python -m bench.pull_speed --size-mib {size_mib} --runs {runs}",
                })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| link | file MB | diskllm pull MB/s | curl MB/s | pull / curl |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['link']} | | | | {r['error']} |")
            continue
        out.append(f"| {r['link']} | {r['bytes'] / 1e6:.0f} | {r['diskllm_Bps'] / 1e6:.0f} "
                   f"| {r['curl_Bps'] / 1e6:.0f} | {r['ratio']:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pull_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size-mib", type=int)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rows = run(a.quick, size_mib=a.size_mib, runs=a.runs, say=lambda s: print(s, file=sys.stderr, flush=True))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
