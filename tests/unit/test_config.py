"""config.toml: defaults, round trip, errors, and every setting reaching llama-server."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import tomli_w

from conftest import assert_one_line_error, free_port, run_cli
from diskllm.core.config import Config, load_config, save_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.paths import Home, build_cache_dir


def test_home_layout(home: Home, monkeypatch):
    assert Home.from_env() == home
    home.ensure()
    for d in (home.models, home.kv_cache, home.sessions, home.logs, home.bin, home.src, home.run):
        assert d.is_dir()
    monkeypatch.delenv("DISKLLM_BUILD_CACHE")
    assert build_cache_dir(home) == home.bin
    monkeypatch.delenv("DISKLLM_HOME")
    assert Home.from_env().root == Path.home() / ".diskllm"


def test_defaults_without_file(home: Home):
    cfg = load_config(home)
    assert (cfg.host, cfg.port, cfg.ctx, cfg.kv_window, cfg.threads, cfg.kv_backend, cfg.server_binary) == (
        "127.0.0.1", 8080, 4096, 256, None, "ssd", None)


def test_round_trip_keeps_other_sections(home: Home):
    home.ensure()
    cfg = Config(port=9000, ctx=2048, threads=2, kv_backend="ram",
                 extra={"registry": {"ollama": "http://x"}, "keymap": {"quit": "q"}})
    save_config(home, cfg)
    text = home.config_file.read_text()
    assert "threads = 2" in text and "server_binary" not in text  # None = absent
    again = load_config(home)
    assert again == cfg
    assert not list(home.root.glob(".config.toml.*"))  # temp file renamed away


def test_unknown_key_is_named(home: Home):
    home.ensure()
    home.config_file.write_text('prot = 1\n')
    with pytest.raises(DiskLLMError, match="unknown setting 'prot'"):
        load_config(home)


@pytest.mark.parametrize("text, key", [
    ('port = "x"\n', "port"), ("port = 70000\n", "port"), ("ctx = 0\n", "ctx"),
    ('kv_backend = "disk"\n', "kv_backend"), ("threads = -1\n", "threads"), ("kv_prefetch = -2\n", "kv_prefetch"),
])
def test_bad_values_are_named(home: Home, text: str, key: str):
    home.ensure()
    home.config_file.write_text(text)
    with pytest.raises(DiskLLMError, match=f"'{key}'"):
        load_config(home)


def test_corrupt_file_is_one_line_cli_error(home: Home):
    home.ensure()
    home.config_file.write_text("port = = 3\n[[[")
    r = run_cli("run", "/nonexistent.gguf")
    assert_one_line_error(r, "not valid TOML")


def test_env_overrides_server_binary(home: Home, monkeypatch):
    home.ensure()
    save_config(home, Config(server_binary="/from/config"))
    assert load_config(home).server_binary == "/from/config"
    monkeypatch.setenv("DISKLLM_LLAMA_SERVER", "/from/env")
    cfg = load_config(home)
    assert cfg.server_binary == "/from/env"
    cfg.ctx = 1000
    save_config(home, cfg)  # the env value is not written into the file
    monkeypatch.delenv("DISKLLM_LLAMA_SERVER")
    assert (load_config(home).server_binary, load_config(home).ctx) == ("/from/config", 1000)


def _dry_run(*args: str) -> list[str]:
    r = run_cli("run", *args, "--dry-run")
    assert r.rc == 0, r.err
    return shlex.split(r.out.strip().splitlines()[-1])


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_every_setting_takes_effect(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str, tmp_path):
    home.ensure()
    # A copy proves server_binary is used (and not the build cache).
    custom = tmp_path / "my-llama-server"
    custom.symlink_to(server_binary)
    port = free_port()
    save_config(home, Config(host="0.0.0.0", port=port, ctx=1234, kv_window=777, kv_prefetch=3, threads=2,
                             kv_backend="ram", server_binary=str(custom)))
    argv = _dry_run(str(smollm2_path))
    assert argv[0] == str(custom)
    assert _flag(argv, "--host") == "0.0.0.0"
    assert _flag(argv, "--port") == str(port)
    assert _flag(argv, "-c") == "1234"
    assert _flag(argv, "-t") == "2"
    assert _flag(argv, "--slot-save-path") == str(home.sessions)
    assert _flag(argv, "--parallel") == "1" and "--metrics" in argv and _flag(argv, "-ngl") == "0"
    if kv_backend == "ssd":
        assert _flag(argv, "--kv-backend") == "ram"
        assert _flag(argv, "--kv-window") == "777"
        assert _flag(argv, "--kv-path") == str(home.kv_cache)
        assert "--kv-prefetch" not in argv  # read-ahead only applies to the ssd backend
        save_config(home, Config(port=port, kv_prefetch=3, server_binary=str(custom)))
        assert _flag(_dry_run(str(smollm2_path)), "--kv-prefetch") == "3"
    else:
        assert "--kv-backend" not in argv
        # kv_backend = "ssd" on a server without the SSD backend is refused, not ignored.
        save_config(home, Config(server_binary=str(custom)))
        assert_one_line_error(run_cli("run", str(smollm2_path), "--dry-run"), "no SSD KV backend")


def test_flags_override_config(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str):
    home.ensure()
    save_config(home, Config(ctx=1234, port=free_port(), threads=2, kv_backend=kv_backend))
    argv = _dry_run(str(smollm2_path), "--ctx", "999", "--port", "8123", "--host", "127.0.0.2",
                    "--threads", "1", "--kv-backend", "ram", "--kv-window", "55",
                    "--server-arg=--seed", "--server-arg", "7")
    assert argv[0] == str(server_binary)
    assert (_flag(argv, "-c"), _flag(argv, "--port"), _flag(argv, "--host"), _flag(argv, "-t")) == (
        "999", "8123", "127.0.0.2", "1")
    assert argv[-2:] == ["--seed", "7"]
    if kv_backend == "ssd":
        assert _flag(argv, "--kv-backend") == "ram" and _flag(argv, "--kv-window") == "55"
        argv = _dry_run(str(smollm2_path), "--kv-prefetch", "0")
        assert _flag(argv, "--kv-prefetch") == "0"  # 0 (off) is a value, not "unset"
        assert_one_line_error(run_cli("run", str(smollm2_path), "--kv-prefetch", "-1", "--dry-run"),
                              "--kv-prefetch must be >= 0")


def test_tomli_w_available():
    assert tomli_w.dumps({"a": 1}) == "a = 1\n"
