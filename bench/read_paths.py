"""Which read path streams a file at the disk's rate inside a memory cgroup at its limit
(issue 14, item 3). One fresh file, read whole by each path in turn, each in a child
process inside the same capped child cgroup, page cache dropped before each:

- odirect:        O_DIRECT preadv, 1 MiB, one at a time (the disk's sequential rate)
- buffered:       read() 1 MiB into one buffer, nothing dropped (the cgroup reclaims)
- buffered-drop:  the same, POSIX_FADV_DONTNEED behind the reader
- dontcache:      preadv2(RWF_DONTCACHE) 1 MiB (uncached buffered I/O, Linux 6.14+)
- willneed:       mmap + MADV_WILLNEED ahead in 2 MiB pieces, pages touched, nothing
                  dropped (what patch 0004 does, residency left to the kernel's LRU)
- willneed-drop:  the same with drop-behind (MADV_DONTNEED + POSIX_FADV_DONTNEED on what
                  was consumed): what patch 0006 does for the streamed part
- io_uring:       whether io_uring_setup is allowed here (not a read path we keep)

    python -m bench.read_paths --mib 1024 --cap-mib 192
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

from diskllm.bench.cgroup import CgroupUnavailable, MemoryCgroup
from diskllm.bench.machine import drop_file_cache, write_test_file

RWF_DONTCACHE = getattr(os, "RWF_DONTCACHE", 0x80)
BLOCK = 1 << 20
PIECE = 2 << 20
PATHS = ("odirect", "buffered", "buffered-drop", "dontcache", "willneed", "willneed-drop")


def _read(path: str, how: str, ahead: int) -> float:
    size = os.path.getsize(path)
    t0 = time.perf_counter()
    if how == "odirect":
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, BLOCK)
        off = 0
        while off < size:
            off += os.preadv(fd, [buf], off)
    elif how in ("buffered", "buffered-drop", "dontcache"):
        fd = os.open(path, os.O_RDONLY)
        buf = bytearray(BLOCK)
        off = 0
        while off < size:
            if how == "dontcache":
                n = os.preadv(fd, [buf], off, RWF_DONTCACHE)
            else:
                n = os.preadv(fd, [buf], off)
                if how == "buffered-drop" and off >= BLOCK:
                    os.posix_fadvise(fd, off - BLOCK, BLOCK, os.POSIX_FADV_DONTNEED)
            off += n
    else:
        fd = os.open(path, os.O_RDONLY)
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        mv = memoryview(m)
        asked = 0
        for off in range(0, size, PIECE):
            while asked < min(size, off + ahead):  # keep `ahead` bytes asked for
                m.madvise(mmap.MADV_WILLNEED, asked, min(PIECE, size - asked))
                asked += PIECE
            end = min(size, off + PIECE)
            _ = bytes(mv[off:end:4096])  # touch every page: compute reading it
            if how == "willneed-drop":
                m.madvise(mmap.MADV_DONTNEED, off, end - off)
                os.posix_fadvise(fd, off, end - off, os.POSIX_FADV_DONTNEED)
        mv.release()
        m.close()
    dt = time.perf_counter() - t0
    os.close(fd)
    return size / dt


def io_uring_allowed() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 8, params)  # io_uring_setup(entries, params)
    if fd >= 0:
        os.close(fd)
        return "allowed"
    return f"refused: {os.strerror(ctypes.get_errno())}"


def run(directory: Path, mib: int, cap_mib: int, ahead_mib: int = 8, repeat: int = 2) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".diskllm-readpaths-{os.getpid()}.bin"
    out: dict = {"file_mib": mib, "cap_mib": cap_mib, "ahead_mib": ahead_mib, "io_uring": io_uring_allowed()}
    try:
        write_test_file(path, mib)
        try:
            cg = MemoryCgroup(cap_mib << 20)
        except CgroupUnavailable as e:
            cg = None
            out["cgroup"] = f"none ({e})"
        try:
            for how in PATHS:
                rates = []
                for _ in range(repeat):
                    drop_file_cache(path)
                    r = subprocess.run([sys.executable, "-m", "diskllm.bench.read_paths", "--child", how,
                                        "--file", str(path), "--ahead-mib", str(ahead_mib)],
                                       capture_output=True, text=True, preexec_fn=cg.preexec if cg else None)
                    if r.returncode != 0:
                        out[how] = f"failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}"
                        break
                    rates.append(float(r.stdout.strip()))
                else:
                    out[how] = max(rates)
        finally:
            if cg:
                cg.close()
    finally:
        path.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.read_paths", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/var/tmp")))
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--cap-mib", type=int, default=192)
    ap.add_argument("--ahead-mib", type=int, default=8)
    ap.add_argument("--child")
    ap.add_argument("--file")
    a = ap.parse_args(argv)
    if a.child:
        print(_read(a.file, a.child, a.ahead_mib << 20))
        return 0
    res = run(a.dir, a.mib, a.cap_mib, a.ahead_mib)
    print(json.dumps(res, indent=1))
    seq = res.get("odirect")
    for how in PATHS:
        v = res.get(how)
        if isinstance(v, float):
            print(f"{how:14s} {v / 1e6:7.0f} MB/s  x O_DIRECT {v / seq if isinstance(seq, float) else 0:.2f}")
        else:
            print(f"{how:14s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
