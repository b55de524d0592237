"""core.memory_budget: the server's budget rule read before a start (patch 0006's
read_budget), and what of the working set streams at a fill. The cgroup files are
written under tmp_path in the kernel's formats (v1 and v2: this host mounts only one
of them, so each is checked on files); `diskllm show` runs through the real CLI."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from diskllm.cli.main import main
from diskllm.core.memory_budget import budget_text, cgroup_memory_limits, estimate_streaming, read_budget, streaming_text
from diskllm.core.models.gguf import read_gguf_info
from diskllm.testing.fetch import fetch_smollm2

MIB = 1 << 20


def _meminfo(tmp_path: Path, avail_mib: int, total_mib: int = 8192) -> Path:
    p = tmp_path / "meminfo"
    p.write_text(f"MemTotal:       {total_mib * 1024} kB\nMemFree:  1 kB\nMemAvailable:   {avail_mib * 1024} kB\n")
    return p


def _v1(tmp_path: Path, limit: int) -> tuple[Path, Path]:
    root = tmp_path / "cg"
    d = root / "memory" / "user" / "job"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (d / "memory.usage_in_bytes").write_text("1000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("12:pids:/user/job\n4:cpu,cpuacct:/user/job\n9:memory:/user/job\n0::/user/job\n")
    return proc, root


def _v2(tmp_path: Path, limit: str) -> tuple[Path, Path]:
    root = tmp_path / "cg2"
    d = root / "user.slice" / "app.scope"
    d.mkdir(parents=True)
    (d / "memory.max").write_text(f"{limit}\n")
    (d / "memory.current").write_text("1000\n")
    proc = tmp_path / "cgroup2"
    proc.write_text("0::/user.slice/app.scope\n")
    return proc, root


def test_v1_limit_less_private_memory_and_the_margin(tmp_path):
    proc, root = _v1(tmp_path, 1024 * MIB)
    b = read_budget(None, 30 * MIB, proc_cgroup=proc, root=root, meminfo=_meminfo(tmp_path, 16384))
    assert b is not None and b.source == "cgroup memory.limit_in_bytes" and b.limit == 1024 * MIB
    assert b.bytes == 1024 * MIB - 30 * MIB - (8 * MIB + 16 * MIB)


def test_v2_limit_and_v2_without_one(tmp_path):
    proc, root = _v2(tmp_path, str(512 * MIB))
    [lim] = cgroup_memory_limits(proc, root)
    assert (lim.limit, lim.version, lim.rest, lim.parent) == (512 * MIB, 2, 0, False)
    b = read_budget(None, 0, proc_cgroup=proc, root=root, meminfo=_meminfo(tmp_path, 16384))
    assert b is not None and b.source == "cgroup memory.max" and b.bytes == 512 * MIB - 16 * MIB
    (root / "user.slice" / "app.scope" / "memory.max").write_text("max\n")
    assert cgroup_memory_limits(proc, root) == []
    b = read_budget(None, 0, proc_cgroup=proc, root=root, meminfo=_meminfo(tmp_path, 4096, total_mib=16384))
    assert b is not None and b.source == "MemAvailable" and b.bytes == (4096 - 512) * MIB  # less 1/32 of RAM


def test_a_parents_limit_less_what_the_rest_of_it_holds(tmp_path):
    """patches/0024: a limit on an ancestor only (a systemd slice) bounds the budget too,
    less what its other members hold; the tighter of all levels wins."""
    proc, root = _v2(tmp_path, "max")
    (root / "user.slice" / "memory.max").write_text(f"{1024 * MIB}\n")
    (root / "user.slice" / "memory.current").write_text(f"{300 * MIB + 1000}\n")  # 300 MiB are others'
    (root / "memory.max").write_text(f"{64 * MIB}\n")  # the mount's root is never read (it has none)
    [lim] = cgroup_memory_limits(proc, root)
    assert (lim.limit, lim.rest, lim.parent) == (1024 * MIB, 300 * MIB, True)
    b = read_budget(None, 20 * MIB, proc_cgroup=proc, root=root, meminfo=_meminfo(tmp_path, 16384))
    assert b is not None and b.source == "parent cgroup memory.max" and b.limit == 1024 * MIB
    assert "(parent cgroup memory.max 1.1 GB, less what the rest of it holds, an 8 MiB" in budget_text(b)
    assert b.bytes == 1024 * MIB - 300 * MIB - 20 * MIB - (8 * MIB + 16 * MIB)
    # a limit of its own that is tighter wins
    (root / "user.slice" / "app.scope" / "memory.max").write_text(f"{512 * MIB}\n")
    b = read_budget(None, 20 * MIB, proc_cgroup=proc, root=root, meminfo=_meminfo(tmp_path, 16384))
    assert b is not None and b.source == "cgroup memory.max" and b.bytes == 512 * MIB - 20 * MIB - 16 * MIB


def test_the_tighter_of_the_cgroup_and_memavailable_and_the_flag_over_both(tmp_path):
    proc, root = _v1(tmp_path, 8192 * MIB)
    b = read_budget(None, 0, proc_cgroup=proc, root=root, meminfo=_meminfo(tmp_path, 1024))
    assert b is not None and b.source == "MemAvailable" and b.bytes == (1024 - 256) * MIB
    b = read_budget(300, 0, proc_cgroup=proc, root=root, meminfo=_meminfo(tmp_path, 1024))
    assert b is not None and (b.source, b.bytes) == ("--kv-budget", 300 * MIB)
    # a v1 memory controller with no limit set reports a huge number: no limit
    (root / "memory" / "user" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_memory_limits(proc, root) == []
    assert read_budget(None, 0, proc_cgroup=tmp_path / "none", root=root, meminfo=tmp_path / "none") is None


def test_what_streams_at_a_fill_is_the_working_set_less_the_budget():
    info = read_gguf_info(fetch_smollm2())
    b = read_budget(100)
    e = estimate_streaming(info, 7000, b)
    # SmolLM2: 23,040 KV bytes per token (f16), weights = the file
    assert e.kv == 23_040 * 7000 and e.working_set == info.file_size + e.kv
    assert e.streamed == e.working_set - 100 * MIB
    text = streaming_text(e)
    assert f"{e.streamed / e.working_set:.0%}" in text and "streams from the SSD per token" in text
    assert "nothing streams" in streaming_text(estimate_streaming(info, 7000, read_budget(4096)))


def _show(capsys, *argv: str) -> tuple[int, dict[str, str], str]:
    rc = main(["show", *argv])
    out, err = capsys.readouterr()
    return rc, {m.group(1).strip(): m.group(2).strip() for m in re.finditer(r"^  (\S.*?)\s{2,}(.*)$", out, re.M)}, err


def test_show_says_what_streams_at_a_fill(capsys, home):
    path = str(fetch_smollm2())
    rc, rows, _ = _show(capsys, path, "--ctx", "8192", "--fill", "7000", "--kv-budget", "100")
    assert rc == 0
    assert rows["memory budget"] == "105 MB (--kv-budget)"
    assert "(60%) streams from the SSD per token" in rows["paging at 7,000 tokens"], rows
    rc, rows, _ = _show(capsys, path, "--ctx", "8192", "--kv-budget", "1000")
    assert "fits the budget: nothing streams" in rows["paging at 8,192 tokens"]
    # this machine's own budget: whatever it is, it is named
    rc, rows, _ = _show(capsys, path, "--ctx", "2048")
    assert rc == 0 and re.search(r"\(((parent )?cgroup memory\.\S+ .*|MemAvailable)\)$", rows["memory budget"]), rows


@pytest.mark.parametrize("argv, says", [
    (["--ctx", "4096", "--fill", "5000"], "--fill 5000 is more than the context (4096)"),
    (["--fill", "0"], "--fill must be a positive integer"),
    (["--kv-budget", "-1"], "--kv-budget must be a positive integer"),
])
def test_show_refuses_a_bad_fill_or_budget_in_one_line(capsys, home, argv, says):
    rc = main(["show", str(fetch_smollm2()), *argv])
    _, err = capsys.readouterr()
    assert rc != 0 and err.startswith(f"error: {says}"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
