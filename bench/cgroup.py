"""A child memory cgroup of this process's own cgroup, for memory-cap benchmarks.

Never move a process outside its own cgroup subtree; where
cgroups are not writable, say so and skip. v1 (memory.limit_in_bytes) and v2
(memory.max) are both handled.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(Exception):
    """No writable memory cgroup here; the message says why."""


def own_memory_cgroup() -> tuple[int, Path]:
    """(version, directory) of this process's memory cgroup."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = ROOT / "memory" / path.lstrip("/")
            if d.is_dir():
                return 1, d
            raise CgroupUnavailable(f"memory cgroup {path} not mounted at {d}")
    if (ROOT / "cgroup.controllers").is_file():
        for line in lines:
            if line.startswith("0::"):
                return 2, ROOT / line[3:].lstrip("/")
    raise CgroupUnavailable("no memory cgroup controller in /proc/self/cgroup")


class MemoryCgroup:
    """Child cgroup `diskllm-bench-<pid>-<n>` under our own memory cgroup, removed on close."""

    _count = 0

    def __init__(self, limit_bytes: int | None, inside: MemoryCgroup | None = None) -> None:
        """limit_bytes None: no limit of its own (`inside`'s bounds it: patches/0024)."""
        self.version, parent = (inside.version, inside.path) if inside else own_memory_cgroup()
        MemoryCgroup._count += 1
        self.path = parent / f"diskllm-bench-{os.getpid()}-{MemoryCgroup._count}"
        self.limit = int(limit_bytes) if limit_bytes is not None else 0
        try:
            if self.version == 2:
                ctl = (parent / "cgroup.subtree_control").read_text().split()
                if "memory" not in ctl:
                    (parent / "cgroup.subtree_control").write_text("+memory")
            self.path.mkdir()
            if limit_bytes is not None:
                self._write_limit()
        except OSError as e:
            self.close()
            raise CgroupUnavailable(f"cannot create a capped child of {parent}: {e.strerror or e}") from None

    def _write_limit(self) -> None:
        if self.version == 1:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
            with contextlib.suppress(OSError):  # no swap accounting: fine
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
        else:
            (self.path / "memory.max").write_text(str(self.limit))
            with contextlib.suppress(OSError):
                (self.path / "memory.swap.max").write_text("0")

    def set_limit(self, limit_bytes: int) -> None:
        """Move the cap while the server runs (issue 14: a shrinking budget). Lowering it
        below what the cgroup holds makes the kernel reclaim first (v1 refuses with EBUSY
        if it cannot)."""
        limit = int(limit_bytes)
        if self.version == 1:
            memsw = self.path / "memory.memsw.limit_in_bytes"
            # memsw must stay >= the memory limit: raise it first, lower it last
            order = ([memsw, self.path / "memory.limit_in_bytes"] if limit > self.limit
                     else [self.path / "memory.limit_in_bytes", memsw])
            for f in order:
                try:
                    f.write_text(str(limit))
                except OSError:
                    if f == memsw:  # no swap accounting
                        continue
                    raise
        else:
            (self.path / "memory.max").write_text(str(limit))
        self.limit = limit

    def usage(self) -> int | None:
        v = self._read("memory.usage_in_bytes" if self.version == 1 else "memory.current").strip()
        return int(v) if v.isdigit() else None

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def preexec(self) -> None:
        """For subprocess.Popen(preexec_fn=...): the child joins the cgroup before exec."""
        fd = os.open(self.procs_file, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # "0" = the writing process itself
        finally:
            os.close(fd)

    def _read(self, name: str) -> str:
        try:
            return (self.path / name).read_text()
        except OSError:
            return ""

    def stat(self) -> dict[str, int]:
        out = {}
        for line in self._read("memory.stat").splitlines():
            k, _, v = line.partition(" ")
            if v.strip().isdigit():
                out[k] = int(v)
        return out

    def peak(self) -> int | None:
        v = self._read("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak").strip()
        return int(v) if v.isdigit() else None

    def oom_kills(self) -> int | None:
        """OOM kills inside the cgroup (v1 memory.oom_control oom_kill, v2 memory.events)."""
        text = self._read("memory.oom_control" if self.version == 1 else "memory.events")
        for line in text.splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v)
        return None

    def close(self) -> None:
        if not self.path.is_dir():
            return
        for _ in range(50):  # the server may still be exiting
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        self.path.rmdir()
