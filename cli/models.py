"""CLI verbs for models: pull, list, show, rm, registry."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from diskllm.core.config import load_config
from diskllm.core.models.gguf import read_gguf_info
from diskllm.core.models.index import InstalledModel, ModelIndex
from diskllm.core.errors import DiskLLMError
from diskllm.core.memory_budget import paging_rows, start_budget
from diskllm.core.models.show import describe
from diskllm.core.rpc.endpoints import parse_endpoints
from diskllm.core.rpc.split import plan_split
from diskllm.core.models.resolve import PullHook, remove_model
from diskllm.core.paths import Home
from diskllm.core.text import printable
from diskllm.core.pull import SOURCE_CHOICES, pull
from diskllm.core.pull.events import CancelToken, PullCancelled
from diskllm.core.models.registry import load_registry
from diskllm.cli.args import require_positive
from diskllm.cli.output import ProgressBar, ago, human_bytes, table


def _home(args: argparse.Namespace) -> Home:
    home = getattr(args, "home", None)
    return home if isinstance(home, Home) else Home.from_env()


# ------------------------------------------------------------------------ verbs
async def pull_with_bar_async(home: Home, spec: str, source: str = "auto", *, name: str | None = None,
                              force: bool = False) -> InstalledModel:
    """Pull with a terminal progress bar; Ctrl-C cancels (partial kept) and raises KeyboardInterrupt."""
    bar = ProgressBar()
    token = CancelToken()
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
    except (PullCancelled, asyncio.CancelledError):
        bar.close()
        print("cancelled; the partial download is kept, run the same pull again to resume", file=sys.stderr)
        raise KeyboardInterrupt from None
    finally:
        try:
            loop.remove_signal_handler(signal.SIGINT)
        except (NotImplementedError, RuntimeError):
            pass
        bar.close()


def pull_with_bar(home: Home, spec: str, source: str = "auto", *, name: str | None = None,
                  force: bool = False) -> InstalledModel:
    return asyncio.run(pull_with_bar_async(home, spec, source, name=name, force=force))


def pull_hook(home: Home) -> PullHook:
    """For `run`/`chat`: how core's resolve_model pulls a registry name that is not installed."""
    async def pull_missing(spec: str) -> InstalledModel:
        print(f"{spec} is not installed; pulling it", file=sys.stderr)
        return await pull_with_bar_async(home, spec)
    return pull_missing


def cmd_pull(args: argparse.Namespace) -> int:
    home = _home(args)
    try:
        model = pull_with_bar(home, args.model, args.source, name=args.name, force=args.force)
    except KeyboardInterrupt:
        return 130
    print(printable(f"pulled {model.name} ({human_bytes(model.size)}, {model.arch} {model.quant}) -> {model.path}"))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    models = ModelIndex(_home(args)).all()
    rows = [["NAME", "ID", "SIZE", "QUANT", "MODIFIED"]]
    rows += [[m.name, m.short_id, human_bytes(m.size), m.quant, ago(m.pulled_at)] for m in models]
    table(rows, gap=4)
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
    cfg = load_config(home)
    require_positive(args, "ctx", "fill", "kv_budget")
    ctx = args.ctx or cfg.ctx
    if args.fill is not None and args.fill > ctx:
        raise DiskLLMError(f"--fill {args.fill} is more than the context ({ctx}): raise --ctx or lower --fill")
    rows += describe(info, ctx, weights, cfg.repack)
    # the ssd backend's paging: what the server's budget rule would keep resident here
    budget = start_budget(info, ctx, cfg.repack, args.kv_budget or cfg.kv_budget, weights)
    rows += paging_rows(info, args.fill or ctx, budget, weights)
    workers = parse_endpoints(args.rpc) if args.rpc else parse_endpoints(cfg.rpc, "config rpc")
    if workers:
        split = plan_split(info, args.ctx or cfg.ctx, [str(w) for w in workers], args.ngl)
        rows.append(("split over RPC workers", f"-ngl {split.ngl}, equal memory offered assumed "
                                               "(run asks the workers)"))
        rows += split.rows(cfg.kv_backend)
    elif args.ngl is not None:
        raise DiskLLMError("--ngl needs --rpc HOST:PORT[,...] (or config rpc)")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k.ljust(width)}  {printable(str(v), multiline=True)}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    home = _home(args)
    for name in args.models:
        model = remove_model(home, name)
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
    table(rows, gap=4)
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
    p.add_argument("--rpc", metavar="HOST:PORT[,...]", help="estimate what each host holds over these workers "
                                                            "(default: config rpc)")
    p.add_argument("--ngl", type=int, metavar="N", help="with --rpc: layers on the workers (as for run)")
    p.add_argument("--fill", type=int, metavar="N", help="tokens in use for the paging estimate (default: the context)")
    p.add_argument("--kv-budget", type=int, metavar="MIB", help="the paging estimate under this budget instead of "
                                                                "this machine's (config: kv_budget)")
    p.set_defaults(func=cmd_show)

    p = subparsers.add_parser("rm", help="remove installed models")
    p.add_argument("models", nargs="+")
    p.set_defaults(func=cmd_rm)

    p = subparsers.add_parser("registry", help="names available to pull")
    p.set_defaults(func=cmd_registry)
