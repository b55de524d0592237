"""Machine description and the disk's own read rates (the physical limit for paged KV)."""
from __future__ import annotations

import mmap
import os
import platform
import random
import subprocess
import time
from pathlib import Path

from diskllm.core.pin import load_pin


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    for line in _run(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def disk_of(path: Path) -> str:
    """Device, filesystem, model/size and rotational flag of the disk holding `path`."""
    src = _run(["findmnt", "-no", "SOURCE,FSTYPE", "--target", str(path)]) or "?"
    dev = src.split()[0]
    info = ""
    if dev.startswith("/dev/"):
        parts = _run(["lsblk", "-dno", "SIZE,ROTA,MODEL", dev]).split(None, 2)
        if len(parts) >= 2:
            info = f"{parts[2] if len(parts) > 2 else ''} size {parts[0]}, rotational={parts[1]}"
        if "virtio" in os.path.realpath(f"/sys/class/block/{Path(dev).name}"):
            info += " (virtio block device)"
    return f"{src} {' '.join(info.split())}".strip()


def describe(kv_dir: Path | None = None) -> dict[str, str]:
    pin = load_pin()
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {
        "cpu": _cpu_model(),
        "cores": f"{usable} usable ({cores} online)",
        "ram": f"{_mem_total() / 2**30:.1f} GiB",
        "disk": disk_of(kv_dir or Path.cwd()),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama.cpp": f"{pin.package}=={pin.version} (sha256 {pin.sha256[:12]}...)",
    }


def drop_file_cache(path: Path, verify: bool = False, wait: float = 20.0) -> None:
    """Evict a file's clean pages from the page cache, so the next reader reads (and is charged for) them.

    `verify`: check with mincore that they went, retrying for `wait` s, and raise if more than
    2% stayed. Pages another process still maps cannot be dropped; a capped server would then
    use them without reading or being charged for them, and its figures would be wrong
    (a server of the last run that has not quite exited is enough)."""
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        left = cached_fraction(path) if verify else 0.0
        if left <= 0.02:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name}: {left:.0%} still in the page cache after dropping it; "
                               "another process maps it (a server still running?)")
        time.sleep(0.5)


def cached_fraction(path: Path) -> float:
    """The part of a file's pages in the page cache (mincore over a read-only mapping)."""
    import ctypes
    size = path.stat().st_size
    if size == 0:
        return 0.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return 0.0
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return 0.0
            return sum(b & 1 for b in vec) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def write_test_file(path: Path, mib: int) -> None:
    """`mib` MiB of incompressible bytes, fsynced: what the disk read benchmarks read back."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def disk_read_rates(directory: Path, size_mib: int = 1024, rand_seconds: float = 3.0) -> dict[str, float]:
    """Sequential O_DIRECT read (1 MiB blocks) and random O_DIRECT 4 KiB reads of a fresh file.

    The file is written (incompressible bytes) and fsynced first, then read with
    O_DIRECT so the page cache is bypassed. Bytes/s.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".diskllm-bench-disk-{os.getpid()}.bin"
    block = 1 << 20
    try:
        write_test_file(path, size_mib)
        drop_file_cache(path)
        buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            t0 = time.perf_counter()
            total = 0
            while True:
                n = os.preadv(fd, [buf], total)
                if n <= 0:
                    break
                total += n
            seq = total / (time.perf_counter() - t0)
            small = mmap.mmap(-1, 4096)
            pages = (size_mib * block) // 4096
            rng = random.Random(1)
            n = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < rand_seconds:
                for _ in range(64):
                    os.preadv(fd, [small], rng.randrange(pages) * 4096)
                n += 64
            rand4k = n * 4096 / (time.perf_counter() - t0)
        finally:
            os.close(fd)
        return {"seq_read_Bps": seq, "rand4k_read_Bps": rand4k, "rand4k_iops": rand4k / 4096,
                "test_file_mib": size_mib}
    finally:
        path.unlink(missing_ok=True)
