"""Issue 15, items 1 (session lock), 3 (file modes), 6 (one bad meta.json) and 8 (export, port, home)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli
from diskllm.core.paths import Home
from diskllm.core.sessions import ModelInfo, SessionStore
from diskllm.core.sessions.errors import SessionBusy
from diskllm.core.sessions.locks import SessionLock

INFO = ModelInfo(name="m:latest", path="/m.gguf", fingerprint="f", ctx=512)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_session_files_are_private_whatever_the_umask(home: Home):
    old = os.umask(0)
    try:
        store = SessionStore(home)
        store.create("s1", INFO, system="secret")
        kv = home.sessions / ".kvtmp-x.bin"
        kv.write_bytes(b"kv")
        os.chmod(kv, 0o666)  # as a server with umask 0 would write its slot file
        s = store.load("s1")
        store.commit(s, kv)
    finally:
        os.umask(old)
    for d in (home.sessions, home.kv_cache, home.logs, home.sessions / "s1"):
        assert _mode(d) == 0o700, d
    for f in (home.sessions / "s1").iterdir():
        assert _mode(f) == 0o600, f


def _write_meta(home: Home, name: str, **over) -> None:
    store = SessionStore(home)
    store.create(name, INFO)
    p = home.sessions / name / "meta.json"
    doc = json.loads(p.read_text())
    doc.update(over)
    p.write_text(json.dumps(doc))


def test_one_bad_meta_is_listed_damaged_and_removable(home: Home):
    _write_meta(home, "good")
    _write_meta(home, "bad", updated="yesterday")
    r = run_cli("sessions")
    assert r.rc == 0, r.err
    lines = {ln.split()[0]: ln for ln in r.out.splitlines()[1:]}
    assert "m:latest" in lines["good"]
    assert "damaged" in lines["bad"] and "updated is a string" in lines["bad"]
    r = run_cli("sessions", "rm", "bad")
    assert r.rc == 0, r.err
    assert not (home.sessions / "bad").exists()


def test_export_refuses_folder_missing_parent_and_overwrite(home: Home, tmp_path: Path):
    SessionStore(home).create("s", INFO)
    assert_one_line_error(run_cli("sessions", "export", "s", "-o", str(tmp_path)), "is a folder")
    assert_one_line_error(run_cli("sessions", "export", "s", "-o", str(tmp_path / "no" / "x.md")),
                          "does not exist")
    target = tmp_path / "x.md"
    target.write_text("mine")
    assert_one_line_error(run_cli("sessions", "export", "s", "-o", str(target)), "--force")
    assert target.read_text() == "mine"
    assert run_cli("sessions", "export", "s", "-o", str(target), "--force").rc == 0
    assert target.read_text().startswith("# Session s")


def test_port_out_of_range(home: Home):
    assert_one_line_error(run_cli("run", "smollm2:135m", "--port", "70000", "--dry-run"), "out of range")


def test_home_is_a_file(home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    f = tmp_path / "afile"
    f.write_text("")
    monkeypatch.setenv("DISKLLM_HOME", str(f))
    for argv in (["sessions"], ["list"], ["ps"]):
        assert_one_line_error(run_cli(*argv), "is a file, not a folder")


def test_second_writer_of_a_session_is_refused_naming_the_holder(home: Home):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from diskllm.core.sessions.locks import SessionLock
        SessionLock(Path({str(home.sessions)!r}), "q1").acquire()
        print("held", flush=True)
        time.sleep(60)
    """), "holder-marker"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SessionBusy) as e:
            SessionLock(home.sessions, "q1").acquire()
        assert f"pid {holder.pid}" in str(e.value) and "holder-marker" in str(e.value)
        SessionLock(home.sessions, "q2").acquire()  # other sessions are free
    finally:
        holder.kill()
        holder.wait()
    SessionLock(home.sessions, "q1").acquire()  # released when the holder died


def test_sessions_pane_rows_show_the_damaged_one(home: Home):
    from diskllm.tui.services import session_rows
    _write_meta(home, "good")
    _write_meta(home, "bad", updated="yesterday")
    rows = {r.name: r for r in session_rows(home)}
    assert rows["good"].model == "m:latest"
    assert "damaged" in rows["bad"].model and "updated" in rows["bad"].model
