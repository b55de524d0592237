"""`diskllm serve`: the Ollama HTTP API on SSD-KV llama-servers, until Ctrl-C or SIGTERM."""
from __future__ import annotations

import argparse

from diskllm.core.api.settings import api_settings, parse_keep_alive
from diskllm.core.config import load_config
from diskllm.core.paths import Home

from diskllm.cli.output import say


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the Ollama API (default 127.0.0.1:11434) for every installed model")
    p.add_argument("--host", help="bind address, or host:port (config: api_host; env DISKLLM_API_HOST, OLLAMA_HOST)")
    p.add_argument("--port", type=int, help="port (config: api_port; default 11434)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (config: api_key; env DISKLLM_API_KEY)")
    p.add_argument("--keep-alive", default="5m", help="how long an idle model stays loaded (default 5m; -1 = forever)")
    p.add_argument("--memory-budget", type=int, metavar="MIB",
                   help="MiB of model weights kept loaded at once (default: half the RAM)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn  # only this verb needs the ASGI stack

    from diskllm.core.api.app import create_app

    home = Home.from_env().ensure()
    settings = api_settings(load_config(home), host=args.host, port=args.port, api_key=args.api_key)
    settings.keep_alive = parse_keep_alive(args.keep_alive, settings.keep_alive)
    if args.memory_budget is not None:
        settings.memory_budget = args.memory_budget << 20
    if not settings.loopback and not settings.api_key:
        say(f"warning: serving on {settings.host} without an API key: anyone who can reach this address "
            "can run, pull and delete models (set --api-key or api_key)")
    print(f"Ollama API at {settings.url} (OpenAI: {settings.url}/v1); Ctrl-C stops it", flush=True)
    uvicorn.run(create_app(home, settings), host=settings.host, port=settings.port, log_level="warning",
                lifespan="on", timeout_graceful_shutdown=5)
    return 0
