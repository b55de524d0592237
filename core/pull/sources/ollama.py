"""Pull from an Ollama registry with its native protocol (no `ollama` binary needed).

GET {registry}/v2/{ns}/{name}/manifests/{tag}   (docker distribution manifest v2)
GET {registry}/v2/{ns}/{name}/blobs/sha256:HEX  (often a redirect to a CDN; Range works)
The GGUF is the layer with mediaType application/vnd.ollama.image.model; template,
params, system and license layers are kept beside it so chat settings survive.
If a local Ollama store already has the blob (`$OLLAMA_MODELS` or ~/.ollama/models),
it is hardlinked (or copied across filesystems) instead of downloaded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx

from diskllm.core.errors import DiskLLMError
from diskllm.core.pull.download import (FileJob, download_file, ensure_free_space, fetch_small,
                                        hash_file, partial_path)
from diskllm.core.pull.events import CancelToken, Progress
from diskllm.core.pull.fetched import Fetched

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])
MODEL_MEDIA = "application/vnd.ollama.image.model"
# Side layers we keep, and the file name each gets in the model folder.
SIDE_LAYERS = {
    "application/vnd.ollama.image.template": "template",
    "application/vnd.ollama.image.params": "params.json",
    "application/vnd.ollama.image.system": "system",
    "application/vnd.ollama.image.license": "license",
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$", re.I)


@dataclass(frozen=True)
class OllamaRef:
    namespace: str
    name: str
    tag: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.tag}"


def parse_ref(spec: str) -> OllamaRef:
    """`qwen2.5:7b`, `library/qwen2.5:7b`, `ns/name:tag`, `registry.ollama.ai/ns/name`."""
    s = spec.strip()
    for host in ("https://", "http://"):
        if s.startswith(host):
            s = s[len(host):]
    parts = s.split("/")
    if len(parts) == 3 and "." in parts[0]:
        parts = parts[1:]  # explicit registry host; the base URL comes from config
    if len(parts) == 1:
        parts = ["library", parts[0]]
    if len(parts) != 2:
        raise DiskLLMError(f"'{spec}' is not an Ollama model name (expected [namespace/]name[:tag])")
    ns, rest = parts
    name, _, tag = rest.partition(":")
    tag = tag or "latest"
    for piece in (ns, name, tag):
        if not _NAME_RE.match(piece):
            raise DiskLLMError(f"'{spec}' is not an Ollama model name")
    return OllamaRef(ns.lower(), name.lower(), tag)


def local_store_blob(digest: str) -> Path | None:
    """Path of a blob in a local Ollama store, if present."""
    root = Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")
    p = root / "blobs" / digest.replace(":", "-")
    return p if p.is_file() else None


def _link_or_copy(src: Path, dst: Path) -> str:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
        return "linked"
    except OSError:  # other filesystem, or links not allowed
        tmp = partial_path(dst)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return "copied"


async def fetch_manifest(client: httpx.AsyncClient, base_url: str, ref: OllamaRef) -> dict:
    url = f"{base_url}/v2/{ref.namespace}/{ref.name}/manifests/{ref.tag}"
    data = await fetch_small(client, url, headers={"Accept": MANIFEST_ACCEPT})
    try:
        manifest = json.loads(data)
    except ValueError:
        raise DiskLLMError(f"{url}: manifest is not JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        raise DiskLLMError(f"{url}: not a registry manifest (no layers)")
    return manifest


def _digest_hex(layer: dict) -> str:
    digest = str(layer.get("digest", ""))
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise DiskLLMError(f"manifest layer has a bad digest {digest!r}")
    return digest.split(":", 1)[1]


async def pull_ollama(client: httpx.AsyncClient, base_url: str, spec: str, dest_dir: Path,
                      progress: Progress, cancel: CancelToken) -> Fetched:
    ref = parse_ref(spec)
    source = f"ollama:{base_url}/{ref}"
    progress.set("manifest", source=f"ollama {ref}", file="manifest", done=0, total=None)
    manifest = await fetch_manifest(client, base_url, ref)
    models = [layer for layer in manifest["layers"] if layer.get("mediaType") == MODEL_MEDIA]
    if len(models) != 1:
        raise DiskLLMError(f"{ref}: manifest has {len(models)} GGUF model layers (need exactly one)")
    model = models[0]
    model_hex, model_size = _digest_hex(model), int(model["size"])
    blob_url = f"{base_url}/v2/{ref.namespace}/{ref.name}/blobs/"

    dest = dest_dir / "model.gguf"
    have = partial_path(dest).stat().st_size if partial_path(dest).exists() else 0
    ensure_free_space(dest_dir, model_size - have)

    # Side layers first: they are tiny, and fetching them before the big blob means
    # a broken manifest fails before gigabytes are spent.
    extra: dict[str, str] = {}
    for layer in manifest["layers"]:
        fname = SIDE_LAYERS.get(layer.get("mediaType", ""))
        if fname is None:
            continue
        digest = _digest_hex(layer)
        data = await fetch_small(client, blob_url + f"sha256:{digest}", sha256=digest)
        (dest_dir / fname).write_bytes(data)
        extra[fname.split(".")[0]] = fname

    progress.set("download", file=dest.name, total=model_size, done=0)
    local = local_store_blob(f"sha256:{model_hex}")
    if local is not None and local.stat().st_size == model_size:
        how = _link_or_copy(local, dest)
        progress.set("verify", message=f"{how} from local Ollama store {local}")
        digest = await hash_file(dest, progress, cancel)
        if digest != model_hex:
            dest.unlink()
            raise DiskLLMError(f"local Ollama blob {local} does not match its digest")
    else:
        await download_file(client, FileJob(blob_url + f"sha256:{model_hex}", dest, model_size, model_hex),
                            progress, cancel)
    return Fetched(source=source, files=[dest.name], digest=f"sha256:{model_hex}",
                   size=model_size, extra=extra)
