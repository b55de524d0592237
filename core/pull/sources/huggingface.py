"""Pull GGUF files from HuggingFace (or any HF-compatible endpoint); direct URLs are sources/url.py.

Listing uses huggingface_hub (`HfApi(endpoint=...).list_repo_tree`, which gives sizes
and the LFS sha256); the bytes come through our own Range requests on the resolve URL
(`hf_hub_url`), because huggingface_hub deletes partial files on failure and so
cannot resume across restarts.

Quant choice: `org/repo:Q5_K_M` picks exactly that quant (error if absent, listing
what exists). Without a quant, the first present in QUANT_PREFERENCE wins. The order
prefers the 4-bit K-quants (the usual size/quality sweet spot), then steps up in
quality (5, 6, 8 bit), then down in size (3, 2 bit), then unquantised.
"""
from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from diskllm.core.errors import DiskLLMError
from diskllm.core.pull.download import (FileJob, SourceUnreachable, download_file, ensure_free_space,
                                        partial_path)
from diskllm.core.pull.events import CancelToken, Progress
from diskllm.core.pull.fetched import Fetched

QUANT_PREFERENCE = (
    "Q4_K_M", "Q4_K_S", "Q4_K_L", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1",
    "Q5_K_M", "Q5_K_S", "Q5_K_L", "Q5_0", "Q5_1", "Q6_K", "Q6_K_L", "Q8_0",
    "Q3_K_L", "Q3_K_M", "Q3_K_XL", "Q3_K_S", "IQ3_M", "IQ3_XS", "IQ3_XXS",
    "Q2_K_L", "Q2_K", "IQ2_M", "IQ2_XS", "IQ2_XXS", "BF16", "F16", "F32",
)
_QUANT_RE = re.compile(
    r"(?<![A-Z0-9])(UD-)?((?:I?Q[1-8]_(?:K_(?:XXS|XS|XL|S|M|L)|K|0|1|XXS|XS|NL|S|M|L)|TQ[12]_0|MXFP4|BF16|F16|F32))(?![A-Z0-9])",
    re.I)
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)


@dataclass(frozen=True)
class HfSpec:
    repo: str
    quant: str | None
    revision: str = "main"


@dataclass(frozen=True)
class HfFile:
    path: str
    size: int
    sha256: str | None


def parse_hf_spec(spec: str) -> HfSpec:
    """`org/repo`, `org/repo:Q5_K_M`, `hf.co/org/repo:Q5_K_M`, `huggingface.co/org/repo`."""
    s = spec.strip()
    for prefix in ("https://huggingface.co/", "huggingface.co/", "hf.co/"):
        if s.lower().startswith(prefix):
            s = s[len(prefix):]
            break
    repo, _, quant = s.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise DiskLLMError(f"'{spec}' is not a HuggingFace repo (expected org/repo[:QUANT])")
    q = quant.upper() or None
    return HfSpec(repo, None if q == "LATEST" else q)


def quant_of(filename: str) -> str | None:
    stem = _SPLIT_RE.sub(".gguf", Path(filename).name)
    hits = _QUANT_RE.findall(stem)
    return hits[-1][1].upper() if hits else None


def choose_files(files: list[HfFile], quant: str | None, repo: str) -> tuple[str, list[HfFile]]:
    """Pick the GGUF file(s) of one quant: (quant, parts in order). Split GGUFs return all parts."""
    ggufs = [f for f in files if f.path.lower().endswith(".gguf")
             and "mmproj" not in Path(f.path).name.lower()]  # vision projectors are not models
    if not ggufs:
        raise DiskLLMError(f"{repo} has no .gguf files")
    by_quant: dict[str, list[HfFile]] = {}
    for f in ggufs:
        by_quant.setdefault(quant_of(f.path) or "?", []).append(f)
    if quant is not None:
        chosen = quant.upper()
        if chosen not in by_quant:
            have = ", ".join(sorted(q for q in by_quant if q != "?")) or "none recognised"
            raise DiskLLMError(f"{repo} has no {chosen} GGUF (available: {have})")
    else:
        chosen = next((q for q in QUANT_PREFERENCE if q in by_quant), None)
        if chosen is None:
            if len(ggufs) != 1:
                raise DiskLLMError(f"{repo}: cannot tell which .gguf to use; name a quant (org/repo:QUANT)")
            chosen = "?"
    group = by_quant[chosen]
    # Several files of the same quant: a split set, or e.g. an -imatrix twin; take the
    # first split set (all its parts) or the smallest single file name.
    splits: dict[str, list[HfFile]] = {}
    singles = []
    for f in group:
        m = _SPLIT_RE.search(f.path)
        if m:
            splits.setdefault(f.path[:m.start()] + f"-of-{m.group(2)}", []).append(f)
        else:
            singles.append(f)
    if singles:
        return chosen, [sorted(singles, key=lambda f: (len(f.path), f.path))[0]]
    base, parts = sorted(splits.items())[0]
    parts.sort(key=lambda f: f.path)
    n = int(_SPLIT_RE.search(parts[0].path).group(2))
    if len(parts) != n:
        raise DiskLLMError(f"{repo}: split GGUF {base} lists {len(parts)} of {n} parts")
    return chosen, parts


def hf_token() -> str | None:
    tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if tok:
        return tok
    try:
        from huggingface_hub import get_token
        return get_token()
    except Exception:  # no token file, OIDC misconfigured...: anonymous access
        return None


async def _probe(client: httpx.AsyncClient, endpoint: str) -> None:
    """huggingface_hub retries connection errors with backoff (~25 s); probe first
    with our short connect timeout so an unreachable endpoint fails fast."""
    try:
        await client.head(endpoint + "/", follow_redirects=False)
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise SourceUnreachable(f"cannot reach {httpx.URL(endpoint).host}: {type(e).__name__} {e}".rstrip()) from None
    except httpx.TransportError:
        pass  # answered somehow; let the real request report details


def list_repo_files(endpoint: str, repo: str, revision: str, token: str | None) -> list[HfFile]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint, token=token or False)
    try:
        entries = list(api.list_repo_tree(repo, recursive=True, revision=revision))
    except GatedRepoError:
        raise DiskLLMError(f"{repo} is gated: accept its license on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise DiskLLMError(f"HuggingFace repo {repo} not found (or private; set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise DiskLLMError(f"{repo} has no revision {revision}") from None
    except HfHubHTTPError as e:
        raise DiskLLMError(f"listing {repo} failed: {str(e).splitlines()[0]}") from None
    out = []
    for e in entries:
        if not hasattr(e, "size"):
            continue  # folder
        lfs = getattr(e, "lfs", None)
        out.append(HfFile(e.path, int(lfs.size if lfs else e.size), lfs.sha256 if lfs else None))
    return out


async def pull_hf(client: httpx.AsyncClient, endpoint: str, spec: HfSpec, dest_dir: Path,
                  progress: Progress, cancel: CancelToken) -> Fetched:
    from huggingface_hub import hf_hub_url

    progress.set("manifest", source=f"huggingface {spec.repo}", file="file list", done=0, total=None)
    await _probe(client, endpoint)
    token = hf_token()
    files = await asyncio.to_thread(list_repo_files, endpoint, spec.repo, spec.revision, token)
    quant, parts = choose_files(files, spec.quant, spec.repo)
    total = sum(p.size for p in parts)
    have = sum(partial_path(dest_dir / Path(p.path).name).stat().st_size
               for p in parts if partial_path(dest_dir / Path(p.path).name).exists())
    ensure_free_space(dest_dir, total - have)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    progress.set("download", total=total, done=0, message=f"{quant}: {len(parts)} file(s)")
    names, first_digest = [], ""
    for p in parts:
        # Parts go flat into the model folder under their own names: llama.cpp finds
        # split siblings by the `-0000k-of-0000N` pattern next to the first part.
        name = Path(p.path).name
        url = hf_hub_url(spec.repo, p.path, revision=spec.revision, endpoint=endpoint)
        digest = await download_file(client, FileJob(url, dest_dir / name, p.size, p.sha256, headers),
                                     progress, cancel)
        first_digest = first_digest or digest
        names.append(name)
    return Fetched(source=f"huggingface:{spec.repo}@{spec.revision}/{parts[0].path}", files=names,
                   digest=f"sha256:{first_digest}", size=total)
