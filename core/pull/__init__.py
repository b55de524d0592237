"""`pull`: resolve a name to sources, try them in order, validate, register.

Async so a TUI can run several pulls at once; progress goes to a callback as
PullEvents, cancellation through a CancelToken (or task cancellation). Nothing is
registered until the file is complete, its sha256 verified and its GGUF header
parses; a source that fails is recorded and the next one is tried, and if all fail
the error lists each source with its reason. Running out of disk space, another
pull holding the lock, and cancellation stop the whole pull (another source would
not help).
"""
from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone
from pathlib import Path

import httpx

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import GGUFError, read_gguf_info
from diskllm.core.models.index import InstalledModel, ModelIndex, model_slug
from diskllm.core.paths import Home
from diskllm.core.pull.download import InsufficientSpace, PullBusy, make_client, model_lock
from diskllm.core.pull.events import CancelToken, ProgressCallback, Progress, PullCancelled
from diskllm.core.pull.fetched import Fetched
from diskllm.core.pull.plan import SOURCE_CHOICES, Candidate, PullPlan, plan_pull
from diskllm.core.pull.sources import SOURCES
from diskllm.core.models.registry import load_registry

__all__ = ["SOURCE_CHOICES", "Candidate", "PullPlan", "plan_pull", "pull"]

def _discard(dest_dir: Path, fetched: Fetched) -> None:
    for f in fetched.files:
        (dest_dir / f).unlink(missing_ok=True)


async def pull(home: Home, spec: str, source: str = "auto", progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None, *, name: str | None = None, force: bool = False,
               client: httpx.AsyncClient | None = None) -> InstalledModel:
    """Pull `spec` (a registry name, ns/name:tag, org/repo[:QUANT] or a .gguf URL) into `home`."""
    registry = load_registry(home)
    plan = plan_pull(registry, spec, source, name)
    cancel = cancel or CancelToken()
    index = ModelIndex(home)
    failures: list[str] = []
    own_client = client is None
    http = client or make_client(registry.settings.connect_timeout)
    try:
        for cand in plan.candidates:
            existing = index.find(cand.name)
            installed = existing is not None and all(p.is_file() for p in existing.paths)
            if installed and not force:
                if name is not None:  # an explicit name over another model: never silently "pulled"
                    raise DiskLLMError(f"model '{existing.name}' is already installed "
                                       f"(from {existing.source}); add --force to replace it")
                Progress(cand.name, progress).set("register", done=existing.size, total=existing.size,
                                                  message="already installed")
                return existing
            if existing is not None and force:
                _refuse_in_use(home, existing)
            slug = model_slug(cand.name)
            dest_dir = home.models / slug
            prog = Progress(cand.name, progress)
            try:
                with model_lock(home.models / ".locks", slug):
                    fetched = await SOURCES[cand.spec.kind](http, cand.spec.params, dest_dir, registry.settings,
                                                             prog, cancel)
                    prog.set("verify", file=fetched.files[0], message="checking GGUF header")
                    try:
                        info = await asyncio.to_thread(read_gguf_info, dest_dir / fetched.files[0])
                    except GGUFError as e:
                        _discard(dest_dir, fetched)  # a non-model must not linger to be "resumed"
                        raise DiskLLMError(f"downloaded file is not a usable GGUF model: {e}") from None
                    model = InstalledModel(
                        name=cand.name, source=fetched.source, digest=fetched.digest, size=fetched.size,
                        arch=info.arch, quant=info.quant, context_length=int(info.context_length or 0),
                        pulled_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        dir=dest_dir, files=fetched.files, extra=fetched.extra)
                    prog.set("register", done=fetched.size, total=fetched.size)
                    index.add(model)
                    if existing is not None:
                        _remove_replaced(existing, model)
                    return model
            except PullBusy:
                raise  # the folder and lock are the other pull's
            except (PullCancelled, InsufficientSpace):
                _tidy_failed(home, dest_dir, slug)
                raise
            except DiskLLMError as e:
                failures.append(f"{cand.spec.describe()}: {e}")
                _tidy_failed(home, dest_dir, slug)
            except (httpx.HTTPError, OSError, ValueError) as e:
                failures.append(f"{cand.spec.describe()}: {type(e).__name__}: {e}")
                _tidy_failed(home, dest_dir, slug)
            if cand is not plan.candidates[-1]:
                prog.emit(f"{cand.spec.describe()} failed, trying the next source")
    finally:
        if own_client:
            await http.aclose()
    head = f"could not pull '{spec}'" if plan.in_registry else \
        f"could not pull '{spec}' (not in the DiskLLM registry; see `diskllm registry`)"
    raise DiskLLMError(head + "; tried: " + "; ".join(failures))


def _refuse_in_use(home: Home, model: InstalledModel) -> None:
    from diskllm.core.models.resolve import servers_using  # late: resolve imports the server registry
    pids = servers_using(home, model)
    if pids:
        raise DiskLLMError(f"{model.name} is in use by server pid {', '.join(map(str, pids))}; "
                           f"stop it first (diskllm stop {model.name})")


def _remove_replaced(old: InstalledModel, new: InstalledModel) -> None:
    """--force: the replaced model's files that the new one does not reuse."""
    keep = {p.resolve() for p in new.paths}
    for p in old.paths:
        if p.resolve() not in keep:
            p.unlink(missing_ok=True)


def _tidy_failed(home: Home, dest_dir: Path, slug: str) -> None:
    """No empty model folder or lock file outlives a pull (a partial download stays, to resume)."""
    with contextlib.suppress(OSError):
        dest_dir.rmdir()  # only when empty
    if not dest_dir.exists():
        with contextlib.suppress(OSError):
            (home.models / ".locks" / f"{slug}.lock").unlink()
