"""`diskllm` command line: argparse front end; verbs live in COMMAND_MODULES.

The `tui` verb imports textual only when it runs, so every other verb (and
core) starts without it. Bare `diskllm` in a terminal opens the workbench."""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Sequence

from diskllm.core.env import env_flag
from diskllm.core.errors import DiskLLMError
from diskllm.core.text import printable

# Each module has register(subparsers) and sets `func` (args -> int | None) on its parsers.
COMMAND_MODULES = [
    "diskllm.cli.server",
    "diskllm.cli.workers",
    "diskllm.cli.models",
    "diskllm.cli.sessions",
    "diskllm.cli.tui",
    "diskllm.cli.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diskllm",
        description="Run GGUF models with llama.cpp, the KV cache on SSD.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _logs_hint() -> str:
    try:
        from diskllm.core.paths import Home
        return f"logs in {Home.from_env().logs}"
    except Exception:  # the hint must never fail
        return "logs in ~/.diskllm/logs"


def main(argv: Sequence[str] | None = None) -> int:
    debug = env_flag("DISKLLM_DEBUG")
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list and sys.stdin.isatty() and sys.stdout.isatty():
        args_list = ["tui"]
    try:
        parser = build_parser()
        args = parser.parse_args(args_list)
        func = getattr(args, "func", None)
        if func is None:  # bare `diskllm` outside a terminal: help, not a full-screen app
            parser.print_help()
            return 0
        return int(func(args) or 0)
    except DiskLLMError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `diskllm ps | head`
        return 1
    except Exception as e:  # a bug: one line unless debugging
        if debug:
            traceback.print_exc()
        else:
            print(
                f"error: unexpected {type(e).__name__}: {e} "
                f"({_logs_hint()}; DISKLLM_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
