"""Session restore vs re-prefill (issue 5): is resuming a saved session cheap?

On one patched llama-server (`--parallel 1 -ngl 0`, SSD KV backend), for a
conversation of about N tokens (synthetic user/assistant turns, sent as a chat
transcript):

- re-prefill: erase the slot, send the transcript (n_predict 0) and take the
  server's prompt_ms: what a resume costs without a saved session;
- save: SessionRunner.save (slot save + fsync + sha256 + atomic folder swap);
- restore: erase, then SessionRunner.restore (sha256 check of kv.bin + slot
  restore), median of 3; "cold" first evicts kv.bin from the page cache
  (posix_fadvise DONTNEED) so it is read from disk;
- verify: re-send the transcript and read timings.cache_n (tokens reused).

Target: restore wall time <= 0.1 x re-prefill.

    python -m bench.session_restore                    # smollm2 + gemma3, 1K and 4K tokens
    python -m bench.session_restore --quick            # smollm2, 1K tokens
    python -m bench.session_restore --model gemma3 --tokens 4096

Importable: run(quick) -> list[dict] (one dict per row, with "command").
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from diskllm.bench.kv_backend import build_home
from diskllm.core.build import ensure_server, server_supports_kv_flags
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.paths import Home
from diskllm.core.server import ServerOptions, start_server, stop_server
from diskllm.core.sessions import ModelInfo, SessionRunner, SessionStore
from diskllm.core.sessions.server_args import session_server_args

WORDS = ("river stone lantern orchard copper meadow harbor violet thunder garden silver "
         "canyon ember willow marble falcon cedar prairie glacier saffron").split()


def _model(name: str) -> Path:
    from diskllm.testing import fetch as testmodels
    return {"smollm2": testmodels.fetch_smollm2, "gemma3": testmodels.fetch_gemma3}[name]()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _turn_text(i: int, n_words: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n_words))


async def _tokens(client: httpx.AsyncClient, base: str, messages: list[dict]) -> tuple[str, int]:
    r = await client.post(f"{base}/apply-template", json={"messages": messages})
    prompt = r.json()["prompt"]
    r = await client.post(f"{base}/tokenize", json={"content": prompt})
    return prompt, len(r.json()["tokens"])


async def build_transcript(client: httpx.AsyncClient, base: str, target: int) -> tuple[list[dict], str, int]:
    """Short user/assistant turns until the templated prompt has at least `target` tokens."""
    msgs: list[dict] = []
    prompt, n = "", 0
    i = 0
    while n < target:
        msgs += [{"role": "user", "content": f"Turn {i}: " + _turn_text(i, 24)},
                 {"role": "assistant", "content": _turn_text(i + 1, 24)}]
        if i % 4 == 3 or n + 150 >= target:
            prompt, n = await _tokens(client, base, msgs)
        i += 1
    return msgs, prompt, n


async def _prefill(client: httpx.AsyncClient, base: str, prompt: str) -> dict:
    r = await client.post(f"{base}/completion",
                          json={"prompt": prompt, "n_predict": 0, "id_slot": 0, "cache_prompt": True})
    r.raise_for_status()
    return r.json()["timings"]


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def measure(model: str, tokens_list: list[int], *, threads: int = 2, kv_backend: str = "ssd",
                  say=print) -> list[dict[str, Any]]:
    path = _model(model)
    info = read_gguf_info(path)
    extra = session_server_args(path)  # what `run --session` and the workbench do (--swa-full for SWA)
    ctx = max(2048, max(tokens_list) * 2)
    if info.context_length and ctx > info.context_length:
        extra += ["--override-kv", f"{info.arch}.context_length=int:{ctx}"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="diskllm-bench-sess-") as tmp:
        home = Home(Path(tmp)).ensure()
        binary = await ensure_server(build_home(), progress=None, use_override=False)
        if not server_supports_kv_flags(binary):
            kv_backend = "ram"
        opts = ServerOptions(model_path=path, ctx=ctx, port=_free_port(), port_explicit=True,
                             kv_backend=kv_backend, threads=threads, extra_args=extra)
        server = await start_server(home, opts, binary)
        try:
            store = SessionStore(home)
            runner = SessionRunner(server.base_url, store, ModelInfo.from_entry(server, home))
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as c:
                for target in tokens_list:
                    msgs, prompt, n = await build_transcript(c, server.base_url, target)
                    await runner.erase()
                    t0 = time.perf_counter()
                    pt = await _prefill(c, server.base_url, prompt)
                    prefill_wall = (time.perf_counter() - t0) * 1000
                    name = f"bench-{model}-{target}"
                    if store.exists(name):
                        store.delete(name)
                    s = store.create(name, runner.model_info, messages=msgs)
                    # the slot holds the prefill just made, outside the runner's turns: save it as is
                    # (save() would see a slot last used by someone else and keep no KV)
                    save = await runner._save(s)
                    warm, cold, server_ms = [], [], []
                    reuse = None
                    for rep_i in range(3):
                        for kind in ("cold", "warm"):
                            await runner.erase()
                            if kind == "cold":
                                _evict(store.path(name) / "kv.bin")
                            rep = await runner.restore(name)
                            (cold if kind == "cold" else warm).append(rep.wall_ms)
                            server_ms.append(rep.restore_ms)
                        if rep_i == 0:
                            reuse = await runner.verify_reuse(s)
                    row = {
                        "bench": "session_restore", "model": model, "kv_backend": kv_backend,
                        "swa_full": bool(extra and extra[0] == "--swa-full"), "threads": threads,
                        "tokens": n, "saved_tokens": save.tokens, "kv_bytes": save.bytes,
                        "prefill_ms": round(float(pt.get("prompt_ms", prefill_wall)), 1),
                        "prefill_tok_s": round(float(pt.get("prompt_per_second", 0.0)), 1),
                        "save_wall_ms": round(save.wall_ms, 1),
                        "restore_server_ms": round(statistics.median(server_ms), 1),
                        "restore_warm_ms": round(statistics.median(warm), 1),
                        "restore_cold_ms": round(statistics.median(cold), 1),
                        "reused": reuse.reused if reuse else 0, "reuse_total": reuse.total if reuse else 0,
                        "command": f"python -m bench.session_restore --model {model} --tokens {target}",
                    }
                    row["ratio_cold"] = round(row["restore_cold_ms"] / max(row["prefill_ms"], 1e-9), 4)
                    row["target_met"] = row["ratio_cold"] <= 0.1 and row["reused"] > 0
                    say(_fmt(row))
                    rows.append(row)
        finally:
            await stop_server(server)
    return rows


def _fmt(r: dict) -> str:
    return (f"{r['model']:8} {r['tokens']:5d} tok  prefill {r['prefill_ms']:8.0f} ms ({r['prefill_tok_s']:.0f} tok/s)  "
            f"restore cold {r['restore_cold_ms']:6.1f} ms warm {r['restore_warm_ms']:6.1f} ms "
            f"(server {r['restore_server_ms']:.1f})  ratio {r['ratio_cold']:.4f}  "
            f"reused {r['reused']}/{r['reuse_total']}  kv {r['kv_bytes'] / 2**20:.1f} MiB  "
            f"save {r['save_wall_ms']:.0f} ms  {'OK' if r['target_met'] else 'MISSED'}")


def run(quick: bool = False, say=print) -> list[dict[str, Any]]:
    """Rows for the `python -m bench` suite."""
    plan = [("smollm2", [1024])] if quick else [("smollm2", [1024, 4096]), ("gemma3", [1024, 4096])]
    rows: list[dict[str, Any]] = []
    for model, sizes in plan:
        rows += asyncio.run(measure(model, sizes, say=say))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.session_restore", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smollm2 at 1K tokens only")
    ap.add_argument("--model", choices=("smollm2", "gemma3"))
    ap.add_argument("--tokens", type=int, action="append", help="conversation size (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print rows as JSON lines too")
    args = ap.parse_args(argv)
    if args.model or args.tokens:
        rows = asyncio.run(measure(args.model or "smollm2", args.tokens or [1024, 4096], threads=args.threads))
    else:
        rows = run(quick=args.quick)
    if args.json:
        for r in rows:
            print(json.dumps(r))
    return 0 if all(r["target_met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
