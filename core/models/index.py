"""Installed models: the index at `<home>/models/index.json`.

Names follow Ollama's rules (documented in docs/models.md):
- a name without a tag gets `:latest` (`smollm2` -> `smollm2:latest`);
- the default Ollama namespace is dropped (`library/qwen2.5:7b` and
  `registry.ollama.ai/library/qwen2.5:7b` -> `qwen2.5:7b`);
- comparison is case-insensitive, but the index keeps the case the user typed
  (HuggingFace repo names such as `hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M`
  read better that way).
Registry aliases (e.g. `smollm2:latest` -> `smollm2:135m`) are applied by `get`
so `diskllm run smollm2` finds what `diskllm pull smollm2` installed.

Paths are stored relative to the models folder so a moved DISKLLM_HOME keeps working.
The index is rewritten atomically under an flock so concurrent pulls of different
models do not lose each other's entries.
"""
from __future__ import annotations

import fcntl
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from diskllm.core.atomic import atomic_write_text
from diskllm.core.errors import DiskLLMError
from diskllm.core.paths import Home

INDEX_VERSION = 1
_OLLAMA_HOSTS = ("registry.ollama.ai/", "ollama.com/")


def normalize_name(name: str) -> str:
    """Canonical display form of a model name (see module docstring)."""
    n = name.strip()
    if not n:
        raise DiskLLMError("empty model name")
    for host in _OLLAMA_HOSTS:
        if n.lower().startswith(host):
            n = n[len(host):]
            break
    if n.lower().startswith("library/"):
        n = n[len("library/"):]
    for prefix in ("https://huggingface.co/", "huggingface.co/"):
        if n.lower().startswith(prefix):
            n = "hf.co/" + n[len(prefix):]
    last = n.rsplit("/", 1)[-1]
    if ":" not in last:
        n += ":latest"
    return n


# Ollama's characters: [host/][ns/]name[:tag], each part a letter or digit then
# letters, digits, '_', '.' or '-'; bounded so a folder name always fits.
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}"
MODEL_NAME_RE = re.compile(rf"(?:{_PART}/){{0,2}}{_PART}:[A-Za-z0-9_][A-Za-z0-9_.-]{{0,79}}")
NAME_RULE = ("model names are [namespace/]name[:tag]: letters, digits, '_', '.' and '-', "
             "each part starting with a letter or digit, at most 80 characters")


def check_model_name(name: str) -> str:
    """The normalised name, or a DiskLLMError naming the rule (the one check every entry uses)."""
    n = normalize_name(name)
    if not MODEL_NAME_RE.fullmatch(n) or ".." in n:
        from diskllm.core.text import printable
        shown = printable(name if len(name) <= 60 else name[:60] + "...")
        raise DiskLLMError(f"invalid model name '{shown}': {NAME_RULE}")
    return n


def name_key(name: str) -> str:
    """Case-insensitive lookup key."""
    return normalize_name(name).lower()


def model_slug(name: str) -> str:
    """Folder name for a model under `<home>/models/` (one folder per installed name)."""
    return re.sub(r"[^a-z0-9._-]+", "_", name_key(name).replace("/", "--").replace(":", "--"))


@dataclass
class InstalledModel:
    name: str
    source: str            # e.g. "ollama:https://registry.ollama.ai/library/qwen2.5:7b"
    digest: str            # "sha256:HEX" of the first (or only) GGUF file
    size: int              # bytes of all GGUF parts together
    arch: str
    quant: str
    context_length: int
    pulled_at: str         # ISO-8601 UTC
    dir: Path              # absolute model folder
    files: list[str]       # GGUF file names inside `dir`, first part first
    extra: dict[str, str] = field(default_factory=dict)  # layer kind -> file name (template, params, ...)

    @property
    def path(self) -> Path:
        """The path llama-server is given (the first part of a split GGUF)."""
        return self.dir / self.files[0]

    @property
    def paths(self) -> list[Path]:
        return [self.dir / f for f in self.files]

    @property
    def short_id(self) -> str:
        return self.digest.split(":", 1)[-1][:12]

    def to_json(self, models_root: Path) -> dict:
        d = asdict(self)
        try:
            d["dir"] = str(self.dir.relative_to(models_root))
        except ValueError:
            d["dir"] = str(self.dir)
        return d

    @classmethod
    def from_json(cls, d: dict, models_root: Path) -> "InstalledModel":
        d = dict(d)
        d["dir"] = models_root / d["dir"]  # absolute paths survive the join unchanged
        d["files"] = list(d["files"])
        d["extra"] = dict(d.get("extra") or {})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class ModelIndex:
    def __init__(self, home: Home):
        self.home = home
        self.root = home.models
        self.file = self.root / "index.json"

    # -- reading -----------------------------------------------------------
    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise DiskLLMError(f"model index {self.file} is unreadable: {e}") from e
        return dict(data.get("models", {}))

    def all(self) -> list[InstalledModel]:
        return sorted((InstalledModel.from_json(d, self.root) for d in self._read().values()),
                      key=lambda m: m.name.lower())

    def find(self, name: str) -> InstalledModel | None:
        """Exact (case-insensitive) match on the normalised name; no aliases."""
        key = name_key(name)
        for d in self._read().values():
            if d["name"].lower() == key:
                return InstalledModel.from_json(d, self.root)
        return None

    def get(self, name: str) -> InstalledModel:
        """Installed model by name, following registry aliases and the `hf.co/` prefix.

        Raises DiskLLMError when nothing matches.
        """
        for candidate in self._candidates(name):
            m = self.find(candidate)
            if m is not None:
                return m
        raise DiskLLMError(f"model '{name}' is not installed (diskllm pull {name})")

    def _candidates(self, name: str) -> list[str]:
        out = [normalize_name(name)]
        if "/" in name and not name.lower().startswith(("hf.co/", "http")):
            out.append("hf.co/" + normalize_name(name))
        try:  # late import: registry imports this module for normalize_name
            from diskllm.core.models.registry import load_registry
            target = load_registry(self.home).alias_target(name)
        except DiskLLMError:
            target = None
        if target:
            out.append(target)
        return out

    # -- writing -----------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict]]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".index.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            models = self._read()
            yield models
            atomic_write_text(self.file, json.dumps(
                {"version": INDEX_VERSION, "models": models}, indent=2, sort_keys=True) + "\n")

    def add(self, model: InstalledModel) -> None:
        with self._locked() as models:
            for k in [k for k, d in models.items() if d["name"].lower() == model.name.lower()]:
                del models[k]
            models[model.name] = model.to_json(self.root)

    def remove(self, name: str, *, delete_files: bool = True) -> InstalledModel:
        """Drop a model from the index (and its folder). Callers check servers first."""
        with self._locked() as models:
            key = name_key(name)
            hit = next((k for k, d in models.items() if d["name"].lower() == key), None)
            if hit is None:
                raise DiskLLMError(f"model '{name}' is not installed")
            model = InstalledModel.from_json(models.pop(hit), self.root)
        if delete_files and model.dir.is_dir() and self.root in model.dir.parents:
            shutil.rmtree(model.dir, ignore_errors=True)
        return model
