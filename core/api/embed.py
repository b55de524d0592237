"""/api/embed and /api/embeddings over a llama-server started with --embeddings.

Why a server of its own: llama-server in embedding mode limits a batch to one ubatch
and pools the outputs, which does not suit generation, so a model that is asked for
both runs two servers (the manager keys them apart). Inputs are tokenized first so an
over-long input is cut (Ollama's `truncate`, default true) or refused in one line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from diskllm.core.api.translate import BadRequest
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import GGUFError, read_gguf_info

DEFAULT_EMBED_CTX = 2048  # Ollama's default num_ctx; the embedding server also uses it as its batch


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


def embed_server_args(model_path: str, ctx: int) -> list[str]:
    """llama-server flags of an embedding server: one ubatch holds a whole input, and a
    model without its own pooling type (a chat model) is mean-pooled, as OpenAI-style
    clients need one vector per input."""
    args = ["--embeddings", "-b", str(ctx), "-ub", str(ctx)]
    try:
        pooling = read_gguf_info(model_path).pooling_type
    except GGUFError:
        pooling = None
    if pooling is None:
        args += ["--pooling", "mean"]
    return args


def embed_inputs(body: dict[str, Any], legacy: bool) -> list[str]:
    """The texts of a request: `input` (a string or a list of strings) for /api/embed,
    `prompt` for the older /api/embeddings."""
    value = body.get("prompt") if legacy else body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if legacy:
        raise BadRequest("prompt must be a string")
    raise BadRequest("input must be a string or a non-empty list of strings")


async def embed(http: httpx.AsyncClient, base_url: str, texts: list[str], *, ctx: int, truncate: bool,
                normalize: bool) -> Embeddings:
    """One vector per text; L2-normalized like Ollama's /api/embed when `normalize`."""
    try:
        tokens: list[list[int]] = []
        for i, text in enumerate(texts):
            r = await http.post(f"{base_url}/tokenize", json={"content": text, "add_special": True})
            r.raise_for_status()
            ids = [int(t) for t in r.json()["tokens"]]
            if len(ids) > ctx:
                if not truncate:
                    which = f"input {i}" if len(texts) > 1 else "the input"
                    raise BadRequest(f"{which} has {len(ids)} tokens, more than the context length {ctx} "
                                     "(send truncate: true to cut it)")
                ids = ids[:ctx]
            if not ids:
                raise BadRequest(f"input {i} is empty" if len(texts) > 1 else "the input is empty")
            tokens.append(ids)
        r = await http.post(f"{base_url}/v1/embeddings",
                            json={"input": tokens, "embd_normalize": 2 if normalize else -1})
        if r.status_code != 200:
            msg = ((r.json().get("error") or {}).get("message") if "json" in r.headers.get("content-type", "")
                   else None) or f"HTTP {r.status_code}"
            raise DiskLLMError(f"embedding failed: {msg}")
        doc = r.json()
    except httpx.HTTPError as e:
        raise DiskLLMError(f"lost connection to {base_url}: {e}") from None
    except (KeyError, ValueError, TypeError) as e:
        raise DiskLLMError(f"embedding failed: unexpected reply from the server ({type(e).__name__})") from None
    data = sorted(doc["data"], key=lambda d: d["index"])
    usage = doc.get("usage") or {}
    return Embeddings([d["embedding"] for d in data], int(usage.get("prompt_tokens") or sum(map(len, tokens))))
