"""The wheel holds every package folder and its `diskllm` script works from a clean venv."""
from __future__ import annotations

import importlib.util
import shutil
import site
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOT_PACKAGES = {"tests", "screenshots", "build", "llama.cpp", "patches", "docs"}


def _package_folders() -> set[str]:
    out = set()
    for init in REPO.rglob("__init__.py"):
        rel = init.parent.relative_to(REPO)
        if rel.parts and (rel.parts[0] in NOT_PACKAGES or rel.parts[0].startswith(".")):
            continue
        out.add(".".join(("diskllm", *rel.parts)))
    return out


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _package_folders() == listed


def _can_build_offline() -> bool:
    """setuptools >= 68 and wheel importable: no build environment to download."""
    try:
        import setuptools
    except ImportError:
        return False
    major = int(setuptools.__version__.split(".")[0])
    return major >= 68 and importlib.util.find_spec("wheel") is not None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (a build must not litter the checkout).

    Offline with the installed build tools when they are recent enough, else in
    pip's isolated build environment (from the configured index)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "tests", "screenshots", ".pytest_cache"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(src)]
    if _can_build_offline():
        cmd.insert(4, "--no-build-isolation")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = work.glob("diskllm-*.whl")
    return whl


def test_wheel_runs_from_a_clean_venv(wheel: Path, tmp_path: Path):
    # A venv without diskllm; its dependencies come from this interpreter's
    # site-packages through a plain path entry (.pth lines are not processed
    # there, so the editable install of the checkout stays invisible).
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
    (Path(purelib) / "_deps.pth").write_text("\n".join(deps) + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
                        "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    where = subprocess.run([str(py), "-c", "import diskllm; print(diskllm.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert where.stdout.startswith(str(env_dir)), (where.stdout, where.stderr)
    for args in (["--help"], ["build", "--help"]):
        r = subprocess.run([str(env_dir / "bin" / "diskllm"), *args], capture_output=True, text=True,
                           cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "usage: diskllm" in r.stdout
