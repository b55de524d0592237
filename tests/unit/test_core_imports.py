"""Import contract: diskllm.core imports neither the front ends (cli, tui) nor textual or argparse."""
from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import diskllm.core

CORE = Path(diskllm.core.__file__).parent
FORBIDDEN = ("textual", "argparse", "diskllm.tui", "diskllm.cli")


def _core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(CORE)], prefix="diskllm.core."))


def _loaded_after(setup: str, roots: tuple[str, ...], prefixes: tuple[str, ...]) -> list[str]:
    """Modules under `roots` / `prefixes` that a fresh interpreter has loaded after running `setup`."""
    code = (
        "import json, sys\n" + setup +
        f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {roots!r}"
        f" or k.startswith({prefixes!r}))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_importing_all_of_core_loads_no_ui():
    setup = (
        "import importlib\n"
        f"for m in {_core_modules()!r}:\n"
        "    if not m.endswith('__main__'): importlib.import_module(m)\n"
    )
    assert _loaded_after(setup, ("textual", "argparse"), ("diskllm.tui", "diskllm.cli")) == []


def test_no_core_file_imports_the_ui():
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                names = [base] if node.level == 0 else [f"diskllm.{base}" if node.level == 2 else base]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                # importlib.import_module("diskllm.tui...") would dodge the checks above
                if node.value.startswith(("diskllm.tui", "diskllm.cli", "textual.")) or node.value == "textual":
                    names = [node.value]
            for n in names:
                if any(n == f or n.startswith(f + ".") for f in FORBIDDEN):
                    offenders.append(f"{path.relative_to(CORE)}:{node.lineno}: {n}")
    assert offenders == []


def test_cli_builds_without_the_ui():
    """Every verb but `tui` runs without textual: the verb imports it only when it runs."""
    setup = "from diskllm.cli import main as cli\ncli.build_parser()\n"
    assert _loaded_after(setup, ("textual",), ("diskllm.tui",)) == []


def test_tui_verb_is_registered_outside_core():
    from diskllm.cli import main as cli

    assert all(name.startswith("diskllm.cli.") for name in cli.COMMAND_MODULES)
    assert "diskllm.cli.tui" in cli.COMMAND_MODULES
    r = subprocess.run([sys.executable, "-m", "diskllm", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "tui" in r.stdout and "open the workbench" in r.stdout
    # not a terminal: bare `diskllm` prints help instead of opening the workbench
    r = subprocess.run([sys.executable, "-m", "diskllm"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "COMMAND" in r.stdout
