"""The `diskllm` console entry: core's command line plus the `tui` verb.

Lives outside core so that core stays free of textual and the TUI: it adds the
`tui` command module to core's list and opens the workbench when `diskllm` is
run with no arguments in a terminal."""
from __future__ import annotations

import sys
from typing import Sequence

from diskllm.cli import main as cli

TUI_MODULE = "diskllm.cli.tui"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if TUI_MODULE not in cli.COMMAND_MODULES:
        cli.COMMAND_MODULES.append(TUI_MODULE)
    if not args and sys.stdin.isatty() and sys.stdout.isatty():
        args = ["tui"]
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
