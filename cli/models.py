"""CLI verbs for models: pull, list, show, rm, registry."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from diskllm.core.config import load_config
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.models.index import InstalledModel, ModelIndex
from diskllm.core.models.show import describe, human_bytes
from diskllm.core.paths import Home
from diskllm.core.pull import SOURCE_CHOICES, pull
from diskllm.core.pull.events import CancelToken, PullCancelled, PullEvent
from diskllm.core.models.registry import load_registry


def _home(args: argparse.Namespace) -> Home:
    home = getattr(args, "home", None)
    return home if isinstance(home, Home) else Home.from_env()


# ------------------------------------------------------------------- progress bar
def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """Renders PullEvents on one terminal line (or plain lines when not a tty)."""

    def __init__(self, stream: TextIO | None = None, width: int = 24):
        self.stream = stream or sys.stderr  # looked up now: tests and redirects swap sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self._last_key: tuple[str, str] | None = None
        self._open = False

    def line(self, ev: PullEvent) -> str:
        if ev.bytes_total is None and not ev.bytes_done:
            return f"{ev.phase:<8} {ev.source}  {ev.file}"
        frac = ev.fraction
        if frac is None:
            bar, pct = " " * self.width, "    "
        else:
            filled = int(frac * self.width)
            bar, pct = "#" * filled + "." * (self.width - filled), f"{frac * 100:3.0f}%"
        size = human_bytes(ev.bytes_done) + (f"/{human_bytes(ev.bytes_total)}" if ev.bytes_total else "")
        rate = f"{human_bytes(ev.rate)}/s" if ev.rate else ""
        return f"{ev.phase:<8} [{bar}] {pct} {size:>17} {rate:>9} ETA {_clock(ev.eta)} {ev.file}"

    def __call__(self, ev: PullEvent) -> None:
        if ev.message:
            self._newline()
            print(f"{ev.model}: {ev.message}", file=self.stream)
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line(ev))
            self.stream.flush()
            self._open = True
        elif (ev.phase, ev.file) != self._last_key:
            print(self.line(ev), file=self.stream)
        self._last_key = (ev.phase, ev.file)

    def _newline(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False

    def close(self) -> None:
        self._newline()
        self.stream.flush()


# ------------------------------------------------------------------------ verbs
def pull_with_bar(home: Home, spec: str, source: str = "auto", *, name: str | None = None,
                  force: bool = False) -> InstalledModel:
    """Pull with a terminal progress bar; Ctrl-C cancels (partial kept) and raises KeyboardInterrupt."""
    bar = ProgressBar()
    token = CancelToken()

    async def run() -> InstalledModel:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_sigint() -> None:
            # Token for a clean stop between chunks, task cancel for a stalled read;
            # either way the partial file stays and the next pull resumes it.
            token.cancel()
            task.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        except (NotImplementedError, RuntimeError):
            pass
        try:
            return await pull(home, spec, source, progress=bar, cancel=token, name=name, force=force)
        finally:
            try:
                loop.remove_signal_handler(signal.SIGINT)
            except (NotImplementedError, RuntimeError):
                pass

    try:
        return asyncio.run(run())
    except (PullCancelled, asyncio.CancelledError):
        bar.close()
        print("cancelled; the partial download is kept, run the same pull again to resume", file=sys.stderr)
        raise KeyboardInterrupt from None
    finally:
        bar.close()


def pull_if_in_registry(home: Home, spec: str) -> InstalledModel | None:
    """For `run`/`chat`: a registry name that is not installed is pulled first (like `ollama run`)."""
    if load_registry(home).get(spec) is None:
        return None
    print(f"{spec} is not installed; pulling it", file=sys.stderr)
    return pull_with_bar(home, spec)


def cmd_pull(args: argparse.Namespace) -> int:
    home = _home(args)
    try:
        model = pull_with_bar(home, args.model, args.source, name=args.name, force=args.force)
    except KeyboardInterrupt:
        return 130
    print(f"pulled {model.name} ({human_bytes(model.size)}, {model.arch} {model.quant}) -> {model.path}")
    return 0


def _ago(iso: str) -> str:
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    s = (datetime.now(timezone.utc) - then).total_seconds()
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            k = int(s // n)
            return f"{k} {unit}{'s' if k > 1 else ''} ago"
    return "just now"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("    ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def cmd_list(args: argparse.Namespace) -> int:
    models = ModelIndex(_home(args)).all()
    rows = [["NAME", "ID", "SIZE", "QUANT", "MODIFIED"]]
    rows += [[m.name, m.short_id, human_bytes(m.size), m.quant, _ago(m.pulled_at)] for m in models]
    _table(rows, sys.stdout)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    home = _home(args)
    target = Path(args.model)
    rows: list[tuple[str, str]] = []
    if target.suffix == ".gguf" and target.is_file():
        info, weights = read_gguf_info(target), None
        rows.append(("path", str(target)))
    else:
        m = ModelIndex(home).get(args.model)
        info = read_gguf_info(m.path)
        weights = m.size
        rows += [("name", m.name), ("path", str(m.path)), ("source", m.source), ("digest", m.digest),
                 ("size", human_bytes(m.size))]
        if m.extra:
            rows.append(("extra files", ", ".join(sorted(m.extra.values()))))
    ctx = args.ctx or load_config(home).ctx
    rows += describe(info, ctx, weights)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    return 0


def _users_of(home: Home, model: InstalledModel) -> list[int]:
    from diskllm.core.server import list_servers
    mine = {p.resolve() for p in model.paths}
    return [s.pid for s in list_servers(home) if Path(s.model_path).resolve() in mine]


def cmd_rm(args: argparse.Namespace) -> int:
    home = _home(args)
    index = ModelIndex(home)
    for name in args.models:
        model = index.get(name)
        pids = _users_of(home, model)
        if pids:
            raise DiskLLMError(f"{model.name} is in use by server pid {', '.join(map(str, pids))}; "
                               "stop it first (diskllm stop)")
        index.remove(model.name)
        print(f"deleted '{model.name}'")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    home = _home(args)
    reg = load_registry(home)
    index = ModelIndex(home)
    rows = [["NAME", "SOURCES", "INSTALLED", "DESCRIPTION"]]
    for e in reg.names():
        kinds = ", ".join(s.kind for s in e.sources)
        rows.append([e.name + (" (user)" if e.user else ""), kinds,
                     "yes" if index.find(e.name) else "", e.description])
    _table(rows, sys.stdout)
    aliases = ", ".join(f"{a} -> {t}" for a, t in sorted(reg.aliases.items()))
    if aliases:
        print(f"\naliases: {aliases}")
    print("\nalso: any Ollama name (ns/name:tag), any HuggingFace GGUF repo (org/repo[:QUANT]), or a .gguf URL")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pull", help="download a model (registry name, ns/name:tag, org/repo[:QUANT], URL)")
    p.add_argument("model")
    p.add_argument("--source", choices=SOURCE_CHOICES, default="auto",
                   help="where to pull from (default: registry order)")
    p.add_argument("--name", help="install under this name instead")
    p.add_argument("--force", action="store_true", help="pull again even if installed")
    p.set_defaults(func=cmd_pull)

    p = subparsers.add_parser("list", aliases=["ls"], help="list installed models")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser("show", help="model geometry, KV bytes per token and memory estimates")
    p.add_argument("model", help="installed model name or a .gguf path")
    p.add_argument("--ctx", type=int, help="context size for the memory estimate (default: config ctx)")
    p.set_defaults(func=cmd_show)

    p = subparsers.add_parser("rm", help="remove installed models")
    p.add_argument("models", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = subparsers.add_parser("registry", help="names available to pull")
    p.set_defaults(func=cmd_registry)
