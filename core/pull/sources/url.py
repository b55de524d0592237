"""A direct https URL to a .gguf file (HuggingFace resolve URLs get the HF token)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from diskllm.core.pull.download import (FileJob, SourceUnreachable, download_file, ensure_free_space,
                                        partial_path)
from diskllm.core.pull.events import CancelToken, Progress
from diskllm.core.pull.fetched import Fetched
from diskllm.core.pull.sources.huggingface import hf_token


async def pull_url(client: httpx.AsyncClient, url: str, dest_dir: Path, progress: Progress,
                   cancel: CancelToken, sha256: str | None = None, endpoint: str | None = None) -> Fetched:
    """A direct https URL to a .gguf file. Size comes from a HEAD (for the space check)."""
    name = unquote(Path(urlparse(url).path).name) or "model.gguf"
    if not name.lower().endswith(".gguf"):
        name += ".gguf"
    headers: dict[str, str] = {}
    if endpoint and url.startswith(endpoint):
        tok = hf_token()
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
    progress.set("manifest", source=f"url {url}", file=name, done=0, total=None)
    size = None
    try:
        head = await client.head(url, headers=headers)
        if head.status_code < 400 and head.headers.get("Content-Length"):
            size = int(head.headers["Content-Length"])
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise SourceUnreachable(f"cannot reach {httpx.URL(url).host}: {type(e).__name__}") from None
    except httpx.TransportError:
        pass
    dest = dest_dir / name
    if size is not None:
        have = partial_path(dest).stat().st_size if partial_path(dest).exists() else 0
        ensure_free_space(dest_dir, size - have)
    progress.set("download", total=size, done=0)
    digest = await download_file(client, FileJob(url, dest, size, sha256, headers), progress, cancel)
    return Fetched(source=f"url:{url}", files=[name], digest=f"sha256:{digest}", size=dest.stat().st_size)
