"""The llama.cpp pin (llama.cpp/pin.toml) and our patch series (patches/*.patch).

Both ship as package data of `diskllm` (the repo root), so they resolve the
same way from a checkout, an editable install and a normal install.
"""
from __future__ import annotations

import platform
import tomllib
from dataclasses import dataclass
from pathlib import Path

import diskllm

from diskllm.core.errors import DiskLLMError


def package_root() -> Path:
    return Path(diskllm.__file__).resolve().parent


def pin_file() -> Path:
    return package_root() / "llama.cpp" / "pin.toml"


def patches_dir() -> Path:
    return package_root() / "patches"


@dataclass(frozen=True)
class Pin:
    package: str
    version: str
    sha256: str
    subdir: str
    llama_cpp_commit: str
    target: str
    cmake_flags: tuple[str, ...]
    # [build.diskllm]: the patched build only, so the stock baseline keeps its key
    patched_cmake_flags: tuple[str, ...] = ()
    extra_targets: tuple[tuple[str, str], ...] = ()  # (cmake target, installed name)

    @property
    def sdist_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}.tar.gz"


def load_pin(path: Path | None = None, machine: str | None = None) -> Pin:
    """The pin; cmake flags are the common ones plus [build.machine.<arch>] for this CPU."""
    path = path or pin_file()
    machine = (machine or platform.machine()).lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        pin, build = data["pin"], data["build"]
        arch_flags = build.get("machine", {}).get(machine, {}).get("cmake_flags", [])
        patched = build.get("diskllm", {})
        return Pin(
            package=pin["package"],
            version=pin["version"],
            sha256=pin["sha256"].lower(),
            subdir=pin["subdir"],
            llama_cpp_commit=pin.get("llama_cpp_commit", ""),
            target=build.get("target", "llama-server"),
            cmake_flags=tuple(build["cmake_flags"]) + tuple(arch_flags),
            patched_cmake_flags=tuple(patched.get("cmake_flags", [])),
            extra_targets=tuple((str(t), str(n)) for t, n in patched.get("extra_targets", [])),
        )
    except FileNotFoundError:
        raise DiskLLMError(f"pin file missing: {path} (broken install?)") from None
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as e:
        raise DiskLLMError(f"invalid pin file {path}: {e}") from None


def patch_files(directory: Path | None = None) -> list[Path]:
    """The patch series in apply order (sorted by file name)."""
    directory = directory or patches_dir()
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.patch") if p.is_file())
