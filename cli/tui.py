"""The `diskllm tui` verb: opens the workbench; textual is imported only when it runs."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tui", help="open the workbench (also: diskllm with no arguments)")
    p.set_defaults(func=cmd_tui)


def cmd_tui(args: argparse.Namespace) -> int:  # noqa: ARG001
    from diskllm.tui.app import run  # lazy: textual loads only here

    return run()
