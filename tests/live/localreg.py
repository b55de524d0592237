"""A local Ollama registry (bench/localhub.py) serving the test models, and a config using only it."""
from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

from diskllm.bench.localhub import Blob, FakeHub, FakeHubServer
from diskllm.core.paths import Home


@contextlib.contextmanager
def local_registry(models: dict[str, Path]) -> Iterator[FakeHub]:
    """models: Ollama ref (library/name:tag) -> GGUF file."""
    h = FakeHub()
    for ref, path in models.items():
        h.add_ollama_model(ref, Blob(path=path))
    with FakeHubServer(h):
        yield h
    h.release.set()


def registry_config(home: Home, url: str, extra: str = "") -> None:
    """Pulls go to the local registry only: PyPI is pointed at an empty folder."""
    home.root.mkdir(parents=True, exist_ok=True)
    (home.root / "no-wheels").mkdir(exist_ok=True)
    home.config_file.write_text(textwrap.dedent(f"""\
        ctx = 1024
        {extra}
        [registry]
        ollama_url = "{url}"
        hf_endpoint = "{url}"
        connect_timeout = 2
        pypi_find_links = "{home.root / 'no-wheels'}"
        """))
