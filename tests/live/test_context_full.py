"""Issue 15 item 7: a full context gets one line naming the size and what to do, never raw JSON."""
from __future__ import annotations

from pathlib import Path

from conftest import assert_one_line_error, free_port, run_cli
from diskllm.core.paths import Home
from diskllm.core.server import ServerOptions, start_server, stop_server


async def test_context_full_lines(home: Home, smollm2_path: Path, server_binary: Path, kv_backend: str):
    opts = ServerOptions(model_path=smollm2_path, ctx=192, port=free_port(), port_explicit=True,
                         kv_backend=kv_backend, kv_window=128, threads=2)
    server = await start_server(home, opts, server_binary)
    chat = ["chat", str(smollm2_path), "--no-start", "--temperature", "0"]
    try:
        # a prompt longer than the context: plain chat and session chat
        long_line = "apple " * 400 + "\n"
        r = run_cli(*chat, input=long_line)
        assert_one_line_error(r, "context full (")
        assert "{" not in r.err and "--ctx" in r.err
        # a reply that fills the context is said, not cut silently
        r = run_cli(*chat, "--max-tokens", "1000", "--session", "full",
                    input="apple " * 100 + "Count from 1 to 300, one number per line.\n")
        assert r.rc == 0, r.err
        assert "context full (" in r.err and "the reply was cut" in r.err
        # resuming the full session: refused with the same line, or it works
        r = run_cli(*chat, "--max-tokens", "8", "--session", "full", input="And then?\n")
        if r.rc != 0:
            assert_one_line_error(r)
            assert "context full (" in r.err or "start it with --ctx" in r.err, r.err
    finally:
        await stop_server(server)
