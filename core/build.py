"""Build the pinned llama-server (optionally patched) into a content-keyed cache.

Cache dir: build_cache_dir(home)/<stock|diskllm>-<key[:16]>/llama-server, where the
key hashes the pin, every patch (name + sha256, in order), the cmake flags, the
targets and RECIPE_VERSION. Anything else (ccache, -j) does not change the result.
The patched build also installs rpc-server beside llama-server (-DGGML_RPC=ON,
[build.diskllm] in pin.toml); the stock build is llama-server alone.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from diskllm.core.config import load_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.hashing import sha256_file
from diskllm.core.paths import Home, build_cache_dir
from diskllm.core.pin import Pin, load_pin, patch_files, patches_dir

# Bump when the build steps change in a way that changes the binary.
RECIPE_VERSION = 1

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildSpec:
    stock: bool = False
    patches: Path | None = None  # patch dir; default: the packaged patches/
    pin: Pin = field(default_factory=load_pin)

    @property
    def flavor(self) -> str:
        return "stock" if self.stock else "diskllm"

    def patch_list(self) -> list[Path]:
        return [] if self.stock else patch_files(self.patches or patches_dir())

    @property
    def cmake_flags(self) -> tuple[str, ...]:
        return self.pin.cmake_flags + (() if self.stock else self.pin.patched_cmake_flags)

    @property
    def extra_targets(self) -> tuple[tuple[str, str], ...]:
        return () if self.stock else self.pin.extra_targets



def cache_key(spec: BuildSpec) -> str:
    doc = {
        "recipe": RECIPE_VERSION,
        "pin": [spec.pin.package, spec.pin.version, spec.pin.sha256, spec.pin.subdir],
        "patches": [[p.name, sha256_file(p)] for p in spec.patch_list()],
        "target": spec.pin.target,
        "cmake_flags": list(spec.cmake_flags),
    }
    if spec.extra_targets:  # absent for stock: its key stays what it was
        doc["extra_targets"] = [list(t) for t in spec.extra_targets]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def binary_path(home: Home, spec: BuildSpec) -> Path:
    return build_cache_dir(home) / f"{spec.flavor}-{cache_key(spec)[:16]}" / spec.pin.target


def rpc_server_path(server: Path) -> Path:
    """The rpc-server built beside a llama-server (same build, same protocol version)."""
    return server.parent / "rpc-server"


def _override_binary(home: Home) -> Path | None:
    """DISKLLM_LLAMA_SERVER or config server_binary, if set (validated)."""
    cfg = load_config(home)
    if not cfg.server_binary:
        return None
    p = Path(cfg.server_binary).expanduser()
    if not p.is_file() or not os.access(p, os.X_OK):
        raise DiskLLMError(f"server binary {p} (DISKLLM_LLAMA_SERVER / server_binary) is not an executable file")
    return p.absolute()


async def ensure_server(
    home: Home,
    stock: bool = False,
    progress: Progress | None = None,
    *,
    force: bool = False,
    use_override: bool = True,
    spec: BuildSpec | None = None,
) -> Path:
    """Return a llama-server binary, building it if it is not cached yet."""
    if use_override and not stock and not force:
        override = _override_binary(home)
        if override:
            return override
    spec = spec or BuildSpec(stock=stock)
    target = binary_path(home, spec)
    if target.is_file() and not force:
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent.parent / f".{target.parent.name}.lock"
    with open(lock_path, "w") as lock:
        # Blocking flock in a thread so the event loop stays responsive.
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(progress, f"waiting for another build of {target.parent.name} to finish")
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        if target.is_file() and not force:  # built while we waited
            return target
        await _Builder(home, spec, target, progress).run()
    return target


def _say(progress: Progress | None, line: str) -> None:
    if progress:
        progress(line)


def _require_tools() -> dict[str, str]:
    tools = {}
    for name in ("cmake", "git"):
        path = shutil.which(name)
        if not path:
            raise DiskLLMError(f"'{name}' not found on PATH; install it (e.g. apt-get install {name}) or run ./install.sh")
        tools[name] = path
    cxx = os.environ.get("CXX") or next(
        (c for c in ("c++", "g++", "clang++") if shutil.which(c)), None
    )
    if not cxx or not shutil.which(cxx):
        raise DiskLLMError("no C++ compiler found (c++/g++/clang++); install one (e.g. apt-get install g++) or run ./install.sh")
    tools["cxx"] = cxx
    return tools


class _Builder:
    def __init__(self, home: Home, spec: BuildSpec, target: Path, progress: Progress | None):
        self.home, self.spec, self.target, self.progress = home, spec, target, progress
        self.key = cache_key(spec)
        home.logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_path = home.logs / f"build-{spec.flavor}-{self.key[:16]}-{stamp}.log"
        self.log = None
        self.seconds: dict[str, float] = {}  # compile wall time per target

    def say(self, line: str) -> None:
        if self.log:
            self.log.write(line + "\n")
            self.log.flush()
        _say(self.progress, line)

    def fail(self, what: str) -> DiskLLMError:
        return DiskLLMError(f"{what} (log: {self.log_path})")

    async def run(self) -> None:
        tools = _require_tools()
        with open(self.log_path, "w", encoding="utf-8") as self.log:
            self.say(f"building {self.spec.flavor} llama-server (llama-cpp-python {self.spec.pin.version}, key {self.key[:16]})")
            sdist = await self.fetch_sdist()
            tree = await asyncio.to_thread(self.extract, sdist)
            await self.apply_patches(tree, tools["git"])
            await self.compile(tree, tools)
            await asyncio.to_thread(self.install, tree / "build" / "bin")
            self.say(f"installed {self.target}")
            # Source tree is only needed for the build; keep the disk tidy.
            await asyncio.to_thread(shutil.rmtree, tree.parent, True)

    async def fetch_sdist(self) -> Path:
        pin = self.spec.pin
        sdist_dir = self.home.src / "sdist"
        sdist_dir.mkdir(parents=True, exist_ok=True)
        path = sdist_dir / pin.sdist_name
        if path.is_file() and await asyncio.to_thread(sha256_file, path) == pin.sha256:
            self.say(f"using cached {path.name}")
            return path
        path.unlink(missing_ok=True)
        self.say(f"downloading {pin.package}=={pin.version} sdist with pip")
        rc = await self.stream(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", f"{pin.package}=={pin.version}", "-d", str(sdist_dir)],
            cwd=sdist_dir,
        )
        if rc != 0 or not path.is_file():
            raise self.fail(f"pip could not download {pin.package}=={pin.version}")
        got = await asyncio.to_thread(sha256_file, path)
        if got != pin.sha256:
            bad = path.with_suffix(".bad")
            os.replace(path, bad)
            raise self.fail(f"sha256 mismatch for {path.name}: expected {pin.sha256}, got {got}")
        return path

    def extract(self, sdist: Path) -> Path:
        """Extract only <top>/<subdir>/ of the sdist into a fresh dir; return the tree."""
        work = self.home.src / f"{self.spec.flavor}-{self.key[:16]}"
        if work.exists():
            shutil.rmtree(work)
        tree = work / "llama.cpp"
        tree.mkdir(parents=True)
        self.say(f"extracting {self.spec.pin.subdir} to {tree}")
        with tarfile.open(sdist, "r:gz") as tar:
            members = []
            for m in tar:
                top, _, rest = m.name.partition("/")
                prefix = self.spec.pin.subdir.rstrip("/") + "/"
                if not rest.startswith(prefix):
                    continue
                rel = rest[len(prefix):]
                # The vendored tree carries a submodule .git file; drop it so git
                # apply does not look for a repository that is not there.
                if not rel or rel == ".git" or rel.startswith(".git/"):
                    continue
                m.name = rel
                members.append(m)
            if not members:
                raise self.fail(f"{sdist.name} has no {self.spec.pin.subdir}/")
            tar.extractall(tree, members=members, filter="data")
        return tree

    async def apply_patches(self, tree: Path, git: str) -> None:
        patches = self.spec.patch_list()
        if not patches:
            self.say("no patches to apply" if not self.spec.stock else "stock build: no patches")
            return
        env = dict(os.environ)
        # Never let git find an enclosing repository (it would re-root the paths).
        env["GIT_CEILING_DIRECTORIES"] = str(tree.parent)
        for p in patches:
            self.say(f"applying {p.name}")
            rc = await self.stream([git, "apply", "--verbose", "--whitespace=nowarn", str(p)], cwd=tree, env=env)
            if rc != 0:
                raise self.fail(f"patch {p.name} does not apply to llama.cpp {self.spec.pin.llama_cpp_commit}")

    async def compile(self, tree: Path, tools: dict[str, str]) -> None:
        flags = list(self.spec.cmake_flags)
        env = dict(os.environ)
        if shutil.which("ccache"):
            flags += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
            # Relative paths in ccache's hash: a fresh tree in another dir still hits.
            env.setdefault("CCACHE_BASEDIR", str(tree))
            env.setdefault("CCACHE_NOHASHDIR", "1")
        self.say("configuring with cmake")
        rc = await self.stream([tools["cmake"], "-S", ".", "-B", "build", *flags], cwd=tree, env=env)
        if rc != 0:
            raise self.fail("cmake configure failed")
        jobs = str(os.cpu_count() or 1)
        # One target after the other, timed: what each costs is in build.json (docs quote it).
        for target in (self.spec.pin.target, *(t for t, _ in self.spec.extra_targets)):
            self.say(f"compiling {target} with {jobs} jobs")
            t0 = time.monotonic()
            rc = await self.stream([tools["cmake"], "--build", "build", "--target", target, "-j", jobs],
                                   cwd=tree, env=env)
            if rc != 0:
                raise self.fail(f"building {target} failed")
            self.seconds[target] = round(time.monotonic() - t0, 1)
            self.say(f"compiled {target} in {self.seconds[target]:.0f} s")

    def install(self, bin_dir: Path) -> None:
        dest_dir = self.target.parent
        dest_dir.mkdir(parents=True, exist_ok=True)
        # extras first: llama-server's presence is what marks the build as cached
        names = [(t, n) for t, n in self.spec.extra_targets] + [(self.spec.pin.target, self.target.name)]
        for target, name in names:
            built = bin_dir / target
            if not built.is_file():
                raise self.fail(f"build finished but {built} is missing")
            tmp = dest_dir / f".{name}.tmp-{os.getpid()}"
            shutil.copy2(built, tmp)
            os.chmod(tmp, 0o755)
            os.replace(tmp, dest_dir / name)
        meta = {
            "key": self.key,
            "flavor": self.spec.flavor,
            "pin": {"package": self.spec.pin.package, "version": self.spec.pin.version,
                    "sha256": self.spec.pin.sha256, "llama_cpp_commit": self.spec.pin.llama_cpp_commit},
            "patches": [{"name": p.name, "sha256": sha256_file(p)} for p in self.spec.patch_list()],
            "cmake_flags": list(self.spec.cmake_flags),
            "targets": [self.spec.pin.target, *(n for _, n in self.spec.extra_targets)],
            "compile_seconds": self.seconds,
            "ccache": bool(shutil.which("ccache")),
            "recipe": RECIPE_VERSION,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "log": str(self.log_path),
        }
        from diskllm.core.atomic import atomic_write_text
        atomic_write_text(dest_dir / "build.json", json.dumps(meta, indent=2) + "\n")

    async def stream(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> int:
        """Run argv, sending every output line to the log and the progress callback."""
        self.say("$ " + " ".join(argv))
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        try:
            async for raw in proc.stdout:
                self.say(raw.decode("utf-8", errors="replace").rstrip())
            return await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise


@lru_cache(maxsize=32)
def _help_text(binary: str, mtime: float) -> str:
    try:
        r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DiskLLMError(f"cannot run {binary} --help: {e}") from None
    return r.stdout + r.stderr


def server_supports_flag(binary: str | os.PathLike[str], flag: str) -> bool:
    """Does this llama-server's --help list `flag`?"""
    b = str(binary)
    try:
        mtime = os.stat(b).st_mtime
    except OSError:
        raise DiskLLMError(f"server binary {b} does not exist") from None
    return flag in _help_text(b, mtime)


def server_supports_kv_flags(binary: str | os.PathLike[str]) -> bool:
    """Does this llama-server know --kv-backend (i.e. carries our SSD patch)?"""
    return server_supports_flag(binary, "--kv-backend")


def iter_cached_builds(home: Home) -> Iterator[Path]:
    d = build_cache_dir(home)
    if d.is_dir():
        yield from sorted(d.glob("*/build.json"))
