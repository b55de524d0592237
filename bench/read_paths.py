"""Which read path streams a file at the disk's rate inside a memory cgroup at its limit
(issue 14, item 3). One fresh file, read whole by each path in rounds over all paths
(median per path), each read in a child process inside the same capped child cgroup,
page cache dropped before each:

- odirect:        O_DIRECT preadv, 1 MiB, one at a time (the disk's sequential rate)
- buffered:       read() 1 MiB into one buffer, nothing dropped (the cgroup reclaims)
- buffered-drop:  the same, POSIX_FADV_DONTNEED behind the reader
- dontcache:      preadv2(RWF_DONTCACHE) 1 MiB (uncached buffered I/O, Linux 6.14+)
- willneed:       mmap + MADV_WILLNEED ahead in 2 MiB pieces, pages touched, nothing
                  dropped (what patch 0004 does, residency left to the kernel's LRU)
- willneed-drop:  the same with drop-behind (MADV_DONTNEED + POSIX_FADV_DONTNEED on what
                  was consumed): what patch 0006 does for the streamed part
- faults:         mmap, no advice, pages touched, nothing dropped (the kernel's read-around)
- populate-drop:  willneed-drop, but the pieces ahead are read by MADV_POPULATE_READ on a
                  second mapping of the file marked MADV_HUGEPAGE: the fault path, which
                  fills the page cache with large folios where MADV_WILLNEED and
                  readahead() allocate one 4 KiB folio per page
- uring-qdN[-4m]:  O_DIRECT reads through io_uring with N in flight (1 MiB, or 4 MiB
                  blocks), by fio when it is installed: does a queue depth get more
                  from the device than one read at a time?
- fio-psync:      odirect's reads issued by fio (checks the two tools agree)
- direct-4jobs:   O_DIRECT preadv by 4 readers, each a quarter of the file (fio)
- io_uring:       whether io_uring_setup is allowed here

Each path also reports the kernel (system) time it spent per 4 KiB page read: on 2 vCPUs
that time is taken from compute.

    python -m bench.read_paths --mib 1024 --cap-mib 192
"""
from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from diskllm.bench.cgroup import CgroupUnavailable, MemoryCgroup
from diskllm.bench.machine import drop_file_cache, write_test_file

RWF_DONTCACHE = getattr(os, "RWF_DONTCACHE", 0x80)
BLOCK = 1 << 20
PIECE = 2 << 20
PATHS = ("odirect", "buffered", "buffered-drop", "dontcache", "willneed", "willneed-drop", "faults",
         "populate-drop")
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+
# fio job options per path; fio is optional (apt-get install fio)
FIO_PATHS: dict[str, tuple[str, ...]] = {
    "fio-psync": ("--ioengine=psync", "--bs=1M"),  # the same reads as odirect, issued by fio
    "uring-qd1": ("--ioengine=io_uring", "--iodepth=1", "--bs=1M"),
    "uring-qd4": ("--ioengine=io_uring", "--iodepth=4", "--bs=1M"),
    "uring-qd16": ("--ioengine=io_uring", "--iodepth=16", "--bs=1M"),
    "uring-qd16-4m": ("--ioengine=io_uring", "--iodepth=16", "--bs=4M"),
    "direct-4jobs": ("--ioengine=psync", "--bs=1M", "--numjobs=4", "--offset_increment={quarter}",
                     "--size={quarter}", "--group_reporting"),
}


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
        # populate-drop reads through a second mapping: MADV_HUGEPAGE there must not
        # change how the reader's own faults behave
        ahead_map = mmap.mmap(fd, size, prot=mmap.PROT_READ) if how == "populate-drop" else m
        if how == "populate-drop":
            ahead_map.madvise(mmap.MADV_HUGEPAGE)
        asked = 0
        for off in range(0, size, PIECE):
            while how != "faults" and asked < min(size, off + ahead):  # keep `ahead` bytes asked for
                n = min(PIECE, size - asked)
                if how == "populate-drop":
                    ahead_map.madvise(MADV_POPULATE_READ, asked, n)
                    ahead_map.madvise(mmap.MADV_DONTNEED, asked, n)  # its page tables only
                else:
                    m.madvise(mmap.MADV_WILLNEED, asked, n)
                asked += PIECE
            end = min(size, off + PIECE)
            _ = bytes(mv[off:end:4096])  # touch every page: compute reading it
            if how in ("willneed-drop", "populate-drop"):
                m.madvise(mmap.MADV_DONTNEED, off, end - off)
                os.posix_fadvise(fd, off, end - off, os.POSIX_FADV_DONTNEED)
        mv.release()
        if ahead_map is not m:
            ahead_map.close()
        m.close()
    dt = time.perf_counter() - t0
    os.close(fd)
    return size / dt


def _fio_argv(path: Path, how: str) -> list[str]:
    quarter = str(path.stat().st_size // 4)
    opts = [o.replace("{quarter}", quarter) for o in FIO_PATHS[how]]
    return ["fio", "--name=read", f"--filename={path}", "--rw=read", "--direct=1", "--readonly",
            "--output-format=json", *opts]


def _fio_rate(stdout: str) -> float:
    job = json.loads(stdout[stdout.index("{"):])["jobs"][0]
    return float(job["read"]["bw_bytes"])


def io_uring_allowed() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 8, params)  # io_uring_setup(entries, params)
    if fd >= 0:
        os.close(fd)
        return "allowed"
    return f"refused: {os.strerror(ctypes.get_errno())}"


def run(directory: Path, mib: int, cap_mib: int, ahead_mib: int = 8, repeat: int = 5) -> dict:
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
        fio = shutil.which("fio")
        if not fio:
            out.update({how: "not measured: fio is not installed" for how in FIO_PATHS})
        paths = PATHS + (tuple(FIO_PATHS) if fio else ())
        rates: dict[str, list[float]] = {how: [] for how in paths}
        sys_us: dict[str, list[float]] = {how: [] for how in paths}
        pages = (mib << 20) / 4096
        try:
            # rounds over all paths, not one path at a time: the shared disk's rate drifts
            # by 2x within minutes, and a median over interleaved rounds compares like with like
            for _ in range(repeat):
                for how in paths:
                    if how in out:  # failed in an earlier round
                        continue
                    drop_file_cache(path)
                    argv = (_fio_argv(path, how) if how in FIO_PATHS else
                            [sys.executable, "-m", "diskllm.bench.read_paths", "--child", how,
                             "--file", str(path), "--ahead-mib", str(ahead_mib)])
                    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
                    r = subprocess.run(argv, capture_output=True, text=True, preexec_fn=cg.preexec if cg else None)
                    sys_us[how].append((resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime - before) * 1e6 / pages)
                    if r.returncode != 0:
                        out[how] = f"failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}"
                        continue
                    rates[how].append(_fio_rate(r.stdout) if how in FIO_PATHS else float(r.stdout.strip()))
            for how, got in rates.items():
                if how not in out:
                    out[how] = statistics.median(got)
                    out[f"{how}_all"] = got
                    out[f"{how}_sys_us_per_page"] = statistics.median(sys_us[how])
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
    ap.add_argument("--repeat", type=int, default=5, help="rounds over all paths (median)")
    ap.add_argument("--child")
    ap.add_argument("--file")
    a = ap.parse_args(argv)
    if a.child:
        print(_read(a.file, a.child, a.ahead_mib << 20))
        return 0
    res = run(a.dir, a.mib, a.cap_mib, a.ahead_mib, a.repeat)
    print(json.dumps(res, indent=1))
    seq = res.get("odirect")
    for how in PATHS + tuple(FIO_PATHS):
        v = res.get(how)
        if isinstance(v, float):
            spread = "/".join(f"{x / 1e6:.0f}" for x in res.get(f"{how}_all", []))
            sys_us = res.get(f"{how}_sys_us_per_page", 0.0)
            print(f"{how:14s} {v / 1e6:7.0f} MB/s  x O_DIRECT {v / seq if isinstance(seq, float) else 0:.2f}"
                  f"  kernel {sys_us:.2f} us/page  ({spread})")
        else:
            print(f"{how:14s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
