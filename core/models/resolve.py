"""MODEL|PATH -> a GGUF file, and removing an installed model; shared by every front end.

Nothing here prints: a pull that resolution starts reports through `on_pull`,
and the caller decides how to show it (a progress bar, a TUI row, NDJSON)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.index import InstalledModel, ModelIndex, check_model_name
from diskllm.core.models.registry import load_registry
from diskllm.core.models.repack import remove_repack_caches
from diskllm.core.paths import Home
from diskllm.core.server import list_servers
from diskllm.core.text import printable

# Called with a registry name that is not installed; returns the model it pulled.
PullHook = Callable[[str], Awaitable[InstalledModel]]


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str


def looks_like_path(spec: str) -> bool:
    """`ns/name:tag` and `hf.co/org/repo:Q4_K_M` are model names, not paths."""
    return _exists(Path(spec).expanduser()) or spec.endswith(".gguf") or spec.startswith((".", "/", "~"))


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # ENAMETOOLONG and friends: not a file we can open
        return False


async def resolve_model(home: Home, spec: str, on_pull: PullHook | None = None) -> ResolvedModel:
    """A file path, an installed name (registry aliases followed), or a registry name to pull.

    Like `ollama run`, a known registry name that is not installed is pulled
    first, through `on_pull`; without one it is an unknown model."""
    p = Path(spec).expanduser()
    if looks_like_path(spec):
        if not _exists(p):
            raise DiskLLMError(f"{printable(spec[:200])}: no such file")
        if p.is_dir():
            raise DiskLLMError(f"{spec} is a directory, not a .gguf file")
        return ResolvedModel(p.resolve(), p.stem)
    check_model_name(spec)
    index = ModelIndex(home)
    try:
        model = index.get(spec)  # follows registry aliases: smollm2 -> smollm2:135m
    except DiskLLMError:
        model = None
        if on_pull is not None and load_registry(home).get(spec) is not None:
            model = await on_pull(spec)
    if model is None:
        raise DiskLLMError(f"unknown model '{spec}' (not a file, not installed; try 'diskllm pull {spec}')")
    return ResolvedModel(Path(model.path), getattr(model, "name", spec))


def servers_using(home: Home, model: InstalledModel) -> list[int]:
    """Pids of the running servers that serve one of the model's files."""
    mine = {p.resolve() for p in model.paths}
    return [s.pid for s in list_servers(home) if Path(s.model_path).resolve() in mine]


def remove_model(home: Home, name: str) -> InstalledModel:
    """Delete an installed model, refusing while a server uses it."""
    index = ModelIndex(home)
    model = index.get(name)
    pids = servers_using(home, model)
    if pids:
        raise DiskLLMError(f"{model.name} is in use by server pid {', '.join(map(str, pids))}; "
                           "stop it first (diskllm stop)")
    remove_repack_caches(home, Path(model.path))  # its repacked copies, for every build and CPU
    index.remove(model.name)
    return model
