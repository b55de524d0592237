"""Resumable, verified HTTP downloads shared by the Ollama, HuggingFace and URL sources.

Contract of `download_file`:
- bytes go to `<dest>.partial`; a partial left by a killed or cancelled pull is
  resumed with `Range: bytes=N-` (its bytes are re-hashed locally, not re-fetched);
- the sha256 covers the whole file, resumed bytes included;
- a dropped connection mid-body is retried from the current offset a few times;
- a connect failure is reported at once (short connect timeout) so the caller can
  fall back to the next source quickly;
- on sha256 mismatch the partial is deleted (its bytes are wrong, resuming would
  only reproduce the mismatch); on success it is renamed onto `dest` atomically.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from diskllm.core.errors import DiskLLMError
from diskllm.core.pull.body import BodyTransfer, sync_client_like
from diskllm.core.pull.events import CancelToken, Progress

CHUNK = 1 << 20
# Headroom kept free beyond the download itself: the index, logs and KV files
# share the disk, and a 100%-full filesystem fails in confusing ways.
FREE_SPACE_MARGIN = 64 << 20
USER_AGENT = "diskllm/0.1 (+https://github.com/diskllm)"


class SourceUnreachable(DiskLLMError):
    """The host did not answer (DNS, refused, connect timeout)."""


class InsufficientSpace(DiskLLMError):
    """Not enough free disk: no point trying another source for the same model."""


class PullBusy(DiskLLMError):
    """Another pull holds this model's lock."""


@dataclass(frozen=True)
class FileJob:
    url: str
    dest: Path
    size: int | None = None          # expected size, None if the server is the only authority
    sha256: str | None = None        # expected hex digest, None to just compute it
    headers: dict[str, str] = field(default_factory=dict)


def make_client(connect_timeout: float = 5.0) -> httpx.AsyncClient:
    # Short connect timeout: an unreachable registry must fail in seconds so the next
    # source is tried; a generous read timeout: CDNs stall briefly on big blobs.
    timeout = httpx.Timeout(60.0, connect=connect_timeout)
    return httpx.AsyncClient(follow_redirects=True, timeout=timeout,
                             headers={"User-Agent": USER_AGENT})


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def ensure_free_space(directory: Path, need: int) -> None:
    """Refuse before downloading rather than fail with ENOSPC at 95%."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if need + FREE_SPACE_MARGIN > free:
        raise InsufficientSpace(
            f"not enough disk space in {directory}: need {_mb(need)} (+{_mb(FREE_SPACE_MARGIN)} headroom), "
            f"{_mb(free)} free")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n < 10**10 else f"{n / 1e9:,.1f} GB"


@contextmanager
def model_lock(lock_dir: Path, slug: str) -> Iterator[None]:
    """Exclusive, non-blocking flock per model: a second pull of the same model fails
    clearly instead of interleaving writes into the same partial file."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{slug}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PullBusy(f"another pull of this model is running (lock {f.name})") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


async def hash_file(path: Path, progress: Progress | None = None, cancel: CancelToken | None = None,
                    limit: int | None = None) -> str:
    """sha256 of a file (or its first `limit` bytes), off the event loop, chunk by chunk."""
    h = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as f:
        while True:
            if cancel:
                cancel.check()
            n = CHUNK * 8 if remaining is None else min(CHUNK * 8, remaining)
            if n == 0:
                break
            data = await asyncio.to_thread(f.read, n)
            if not data:
                break
            await asyncio.to_thread(h.update, data)
            if remaining is not None:
                remaining -= len(data)
            if progress:
                progress.advance(len(data))
    return h.hexdigest()


def _connect_error(url: str, e: Exception) -> SourceUnreachable:
    host = httpx.URL(url).host
    return SourceUnreachable(f"cannot reach {host}: {type(e).__name__} {e}".rstrip())


def _http_error(url: str, status: int) -> DiskLLMError:
    hint = {401: " (authentication required; set HF_TOKEN for gated HuggingFace repos)",
            403: " (forbidden; gated repo? set HF_TOKEN)", 404: " (not found)"}.get(status, "")
    return DiskLLMError(f"HTTP {status} from {url}{hint}")


async def download_file(client: httpx.AsyncClient, job: FileJob, progress: Progress,
                        cancel: CancelToken, *, retries: int = 5) -> str:
    """Download job.url to job.dest with resume and verification; returns the sha256 hex."""
    dest, part = job.dest, partial_path(job.dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    progress.file = dest.name

    if dest.exists() and job.size is not None and dest.stat().st_size == job.size:
        # Completed by an earlier run that died before registering: verify, don't re-fetch.
        progress.set("verify", file=dest.name)
        digest = await hash_file(dest, progress, cancel)
        if job.sha256 is None or digest == job.sha256:
            return digest
        dest.unlink()

    offset = part.stat().st_size if part.exists() else 0
    if job.size is not None and offset > job.size:
        part.unlink()
        offset = 0
    h = hashlib.sha256()
    if offset:
        # Hash what is already on disk so the final digest covers the whole file.
        progress.emit(f"resuming {dest.name} at {_mb(offset)}")
        with open(part, "rb") as f:
            while data := await asyncio.to_thread(f.read, CHUNK * 8):
                await asyncio.to_thread(h.update, data)  # GBs of partial: keep the loop responsive
                cancel.check()
        progress.done += offset

    attempt = 0
    total = job.size

    def report(n: int, known_total: int | None) -> None:
        if known_total is not None and progress.total is None:
            progress.set("download", total=known_total)
        progress.phase = "download"
        progress.advance(n)

    sync_client = sync_client_like(client)
    try:
        while total is None or offset < total:
            cancel.check()
            headers = dict(job.headers)
            if offset:
                headers["Range"] = f"bytes={offset}-"
            transfer = BodyTransfer(sync_client, job.url, headers, part, offset, total, h, cancel)
            try:
                res = await transfer.run(report)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                offset, h = transfer.offset, transfer.sha
                if attempt == 0 and offset == 0:
                    raise _connect_error(job.url, e) from None
                attempt += 1
                if attempt > retries:
                    raise _connect_error(job.url, e) from None
                await asyncio.sleep(min(2.0, 0.2 * attempt))
                continue
            except (httpx.TransportError, httpx.DecodingError) as e:
                # Dropped mid-body: keep what we have and ask for the rest.
                offset, h = transfer.offset, transfer.sha
                attempt += 1
                if attempt > retries:
                    raise DiskLLMError(f"download of {dest.name} kept failing ({type(e).__name__}); "
                                       f"{_mb(offset)} kept, run pull again to resume") from None
                progress.emit(f"connection dropped at {_mb(offset)}, resuming")
                await asyncio.sleep(min(2.0, 0.2 * attempt))
                continue
            if res.status == 416 and total is not None and offset == total:
                break
            if res.status >= 400:
                raise _http_error(job.url, res.status)
            offset, h = transfer.offset, transfer.sha
            if total is None:
                # no Content-Length: the server closing the body is the end
                total = res.total if res.total is not None else offset
    finally:
        sync_client.close()

    if total is not None and offset != total:
        part.unlink(missing_ok=True)
        raise DiskLLMError(f"{dest.name}: server sent {offset} bytes, expected {total}; partial removed")
    digest = h.hexdigest()
    progress.set("verify", file=dest.name)
    if job.sha256 is not None and digest != job.sha256.lower():
        part.unlink(missing_ok=True)
        raise DiskLLMError(f"sha256 mismatch for {dest.name}: expected {job.sha256}, got {digest}; "
                           "partial removed")
    os.replace(part, dest)
    return digest


async def fetch_small(client: httpx.AsyncClient, url: str, *, headers: dict[str, str] | None = None,
                      sha256: str | None = None, max_bytes: int = 16 << 20) -> bytes:
    """GET a small document (manifest layer, template) fully into memory, verified if a digest is given."""
    try:
        resp = await client.get(url, headers=headers or {})
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise _connect_error(url, e) from None
    except httpx.TransportError as e:
        raise DiskLLMError(f"fetching {url} failed: {type(e).__name__} {e}") from None
    if resp.status_code >= 400:
        raise _http_error(url, resp.status_code)
    data = resp.content
    if len(data) > max_bytes:
        raise DiskLLMError(f"{url}: unexpectedly large ({len(data)} bytes)")
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise DiskLLMError(f"sha256 mismatch for {url}")
    return data
