"""Issue 15, items 2, 5 and 8: model names from users and URLs (one grammar, normalised once)."""
from __future__ import annotations

import pytest

from diskllm.core.models.index import ModelIndex
from test_models_cli import _sleeping_server_entry, hub, mhome, run, smol_blob  # noqa: F401  (fixtures)


def test_name_is_normalised_so_every_verb_finds_it(mhome, capsys):
    rc, _, err = run(capsys, "pull", "smollm2:135m", "--source", "ollama", "--name", "slowm")
    assert rc == 0, err
    rc, out, _ = run(capsys, "list")
    assert "slowm:latest" in out
    rc, out, err = run(capsys, "show", "slowm")
    assert rc == 0, err
    rc, _, err = run(capsys, "rm", "slowm")
    assert rc == 0, err


@pytest.mark.parametrize("bad", ["../../evilx", "/abs", "a/b/c/d", "ünï", "e\x1b]0;pwn\x07x", "x" * 300])
def test_bad_names_are_refused_naming_the_rule(mhome, capsys, bad):
    rc, _, err = run(capsys, "pull", "smollm2:135m", "--source", "ollama", "--name", bad)
    assert rc == 1 and err.startswith("error: invalid model name") and "[namespace/]name[:tag]" in err
    assert "\x1b" not in err and "\x07" not in err and len(err.splitlines()) == 1
    assert not [p for p in mhome.models.iterdir() if p.name not in ("index.json",)] if mhome.models.exists() else True


def test_long_model_name_on_run_is_one_line(mhome, capsys):
    rc, _, err = run(capsys, "run", "m" * 5000, "--headless")
    assert rc == 1 and err.startswith("error: invalid model name") and len(err.splitlines()) == 1


def test_name_over_installed_model_needs_force(mhome, capsys):
    assert run(capsys, "pull", "smollm2:135m", "--source", "ollama")[0] == 0
    rc, _, err = run(capsys, "pull", "hf.co/org/smol-GGUF", "--name", "smollm2:135m")
    assert rc == 1 and "already installed" in err and "--force" in err


def test_force_refuses_a_model_in_use_and_removes_the_old_file(mhome, capsys):
    assert run(capsys, "pull", "smollm2:135m", "--source", "ollama")[0] == 0
    old = ModelIndex(mhome).get("smollm2:135m")
    proc = _sleeping_server_entry(mhome, old.path)
    try:
        rc, _, err = run(capsys, "pull", "hf.co/org/smol-GGUF", "--name", "smollm2:135m", "--force")
        assert rc == 1 and f"in use by server pid {proc.pid}" in err
    finally:
        proc.kill()
        proc.wait()
    rc, _, err = run(capsys, "pull", "hf.co/org/smol-GGUF", "--name", "smollm2:135m", "--force")
    assert rc == 0, err
    new = ModelIndex(mhome).get("smollm2:135m")
    assert new.path.is_file() and (new.path == old.path or not old.path.exists())


def test_failed_pull_leaves_no_empty_folder_or_lock(mhome, capsys, hub):
    rc, _, err = run(capsys, "pull", f"{hub.url}/files/missing.gguf")
    assert rc == 1
    left = [p.name for p in mhome.models.rglob("*") if p.name != "index.json"] if mhome.models.exists() else []
    assert left in ([], [".locks"]), left


def test_url_file_name_escapes_never_reach_the_terminal(mhome, capsys, hub, smol_blob):
    hub.files["e\x1b]0;pwn\x07x.gguf"] = smol_blob
    rc, out, err = run(capsys, "pull", f"{hub.url}/files/e%1B%5D0%3Bpwn%07x.gguf")
    assert rc == 0, err
    rc, out, err = run(capsys, "list")
    assert "\x1b" not in out + err and "\x07" not in out + err


def test_printable_strips_terminal_controls():
    from diskllm.core.text import printable
    assert printable("a\x1b]0;pwn\x07b\x9bc") == "a?]0;pwn?b?c"
    assert printable("l1\nl2\tx\r", multiline=True) == "l1\nl2\tx?"


def test_show_and_errors_strip_controls(mhome, capsys, tmp_path):
    rc, _, err = run(capsys, "show", "ev\x1b]0;il\x07")
    assert rc == 1 and "\x1b" not in err and "\x07" not in err
