"""User mistakes end in one `error:` line, a non-zero exit and no traceback."""
from __future__ import annotations

import socket
from pathlib import Path

import psutil

from conftest import assert_one_line_error, run_cli
from diskllm.core.paths import Home


def test_not_gguf(home: Home, tmp_path: Path):
    p = tmp_path / "notes.gguf"
    p.write_text("just some text\n")
    assert_one_line_error(run_cli("run", str(p), "--headless"), "not a GGUF file")


def test_truncated_gguf(home: Home, tmp_path: Path, smollm2_path: Path):
    p = tmp_path / "cut.gguf"
    with open(smollm2_path, "rb") as f:
        p.write_bytes(f.read(20_000_000))
    assert_one_line_error(run_cli("run", str(p), "--headless"), "truncated")


def test_missing_path(home: Home, tmp_path: Path):
    assert_one_line_error(run_cli("run", str(tmp_path / "nope.gguf")), "no such file")


def test_unknown_model_name(home: Home):
    assert_one_line_error(run_cli("run", "no-such-model-xyz"), "unknown model 'no-such-model-xyz'")


def test_busy_explicit_port(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("run", str(smollm2_path), "--headless", "--port", str(port), "--kv-backend", kv_backend)
    assert_one_line_error(r, f"port {port} on 127.0.0.1 is in use")


def _no_server_left(home: Home) -> None:
    marker = str(home.sessions)
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
    assert list(home.run.glob("*.json")) == []


def test_server_dies_on_bad_flag(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str):
    r = run_cli("run", str(smollm2_path), "--headless", "--kv-backend", kv_backend,
                "--server-arg=--definitely-not-a-flag")
    assert_one_line_error(r, "llama-server exited at start")
    assert "--definitely-not-a-flag" in r.err and "log:" in r.err
    _no_server_left(home)


def test_server_dies_on_unknown_arch(home: Home, tmp_path: Path, server_binary: Path, kv_backend: str):
    # A well-formed GGUF the server cannot load: it exits right away, we show why.
    import numpy as np
    from gguf import GGUFWriter
    p = tmp_path / "alien.gguf"
    w = GGUFWriter(p, "no-such-arch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run_cli("run", str(p), "--headless", "--kv-backend", kv_backend, timeout=120)
    assert_one_line_error(r, "llama-server exited at start")
    assert "no-such-arch" in r.err
    _no_server_left(home)


def test_stop_unknown_and_chat_no_start(home: Home):
    assert_one_line_error(run_cli("stop", "nothing-running"), "no running server")
    assert_one_line_error(run_cli("chat", "nothing-running", "--no-start"), "no running server")
    r = run_cli("stop")
    assert r.rc == 0 and "no servers running" in r.out


def test_bad_flag_value(home: Home, smollm2_path: Path):
    assert_one_line_error(run_cli("run", str(smollm2_path), "--ctx", "0"), "--ctx")


def test_no_args_prints_help(home: Home):
    r = run_cli()
    assert r.rc == 0 and "usage: diskllm" in r.out


def test_home_is_a_file(home: Home, monkeypatch, tmp_path: Path):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("DISKLLM_HOME", str(f))
    assert_one_line_error(run_cli("build"), "is a file, not a folder")


def test_unexpected_exception_is_one_line(home: Home, monkeypatch, capsys):
    from diskllm.cli import main as cli, server as cli_server

    def boom(args):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(cli_server, "cmd_ps", boom)
    assert cli.main(["ps"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected RuntimeError: kaboom") and "DISKLLM_DEBUG=1" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("DISKLLM_DEBUG", "1")
    assert cli.main(["ps"]) == 1
    assert "Traceback" in capsys.readouterr().err
