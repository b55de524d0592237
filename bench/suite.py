"""The whole benchmark suite in one command: `python -m bench` (issue 7).

Runs every benchmark on this machine, then rewrites docs/benchmarks.md from the figures
(bench/report.py renders it). `--quick` runs tiny sizes in a few minutes: it proves the
suite works (CI runs it), its figures are not the ones to quote.

    python -m bench                       # full run (about an hour on 2 cores), rewrites docs/benchmarks.md
    python -m bench --quick --out /tmp/b.md
    python -m bench --only backends paging --json out.json
    python -m bench --from-json out.json  # re-render docs/benchmarks.md from saved rows
    python -m bench --only pull --update out.json   # rerun one section, keep the others' rows
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from diskllm.bench import kv_backend, kv_paging, pull_speed, repack, rpc, session_restore
from diskllm.bench.machine import describe

Say = Callable[[str], None]
SECTIONS = ("backends", "quant", "caps", "paging", "repack", "rpc", "sessions", "pull")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
Q8 = ["-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"]


@dataclass(frozen=True)
class Config:
    """One benchmark invocation: the module, its arguments, and the command that reproduces it."""
    section: str
    model: str
    ctx: int
    fill: int
    extra: tuple[str, ...] = ()
    fractions: tuple[float, ...] = ()
    label: str = ""
    cap_gb: float = 0.0  # repack: the memory cap for server + page cache (0 = none)
    variants: tuple[str, ...] = ()  # repack: the servers compared (default: all of bench.repack's)
    runs: int = 0                   # repack: decode runs per server (0 = the module's default)
    n_predict: int = 0
    cap_only: bool = False          # repack: only the capped runs (each server alone)

    def _repack_command(self) -> str:
        cmd = f"python -m bench.repack --ctx {self.ctx} --fill {self.fill} --cap-gb {self.cap_gb:g}"
        if self.variants:
            cmd += " --variants " + " ".join(self.variants)
        if self.runs:
            cmd += f" --runs {self.runs}"
        if self.n_predict:
            cmd += f" --n-predict {self.n_predict}"
        if self.cap_only:
            cmd += " --cap-only"
        return cmd

    def command(self) -> str:
        if self.section == "repack":
            return self._repack_command()
        if self.section == "rpc":
            return f"python -m bench.rpc --model {self.model} --ctx {self.ctx} --fill {self.fill}"
        if self.section == "paging":
            cmd = f"python -m bench.kv_paging --model {self.model} --ctx {self.ctx} --fill {self.fill}"
            if self.fractions:
                cmd += " --fractions " + " ".join(f"{f:g}" for f in self.fractions)
        else:
            cmd = f"python -m bench.kv_backend --model {self.model} --ctx {self.ctx} --fill {self.fill}"
            if self.fractions:
                cmd += " --cap-fraction " + " ".join(f"{f:g}" for f in self.fractions) + " --cap-base ctx --no-disk --no-uncapped"
        return cmd + (" -- " + " ".join(self.extra) if self.extra else "")


def plan(quick: bool) -> list[Config]:
    if quick:  # tiny: proves every path works, in minutes
        return [
            Config("backends", "smollm2", 4096, 512),
            Config("quant", "smollm2", 4096, 512, tuple(Q8), label="q8_0"),
            Config("caps", "smollm2", 16384, 512, fractions=(0.25,)),  # 25% of a 360 MiB KV
            Config("paging", "smollm2", 2048, 1000, fractions=(0.25,)),
            Config("repack", "qwen7b-full", 4096, 256, label="2 layers"),
            Config("rpc", "smollm2", 2048, 256),
        ]
    return [
        Config("backends", "smollm2", 32768, 7000),
        Config("backends", "gemma3", 32768, 7000),
        Config("backends", "qwen7b-geom", 8192, 7000),
        Config("backends", "qwen7b-geom", 32768, 7000),
        Config("backends", "qwen7b-geom", 65536, 7000),
        Config("quant", "qwen7b-geom", 32768, 7000, tuple(Q8), label="q8_0"),
        Config("caps", "smollm2", 32768, 7000, fractions=(0.5, 0.25)),
        Config("caps", "qwen7b-geom", 32768, 7000, fractions=(0.5, 0.25)),
        Config("paging", "smollm2", 8192, 7000, fractions=(0.5, 0.25)),
        Config("paging", "qwen7b-geom", 16384, 7000, fractions=(0.5, 0.25)),
        Config("paging", "smollm2", 8192, 7000, tuple(Q8), fractions=(0.5, 0.25), label="q8_0"),
        Config("paging", "qwen7b-geom", 16384, 7000, tuple(Q8), fractions=(0.5, 0.25), label="q8_0"),
        # 28 layers on 2 cores: prefill ~2.5 tok/s and decode ~1.5 tok/s, so 512 filled
        # tokens is what fits "a few minutes" per server; 64K leaves out the cache variant.
        # Under the cap (each server alone) decode is ~0.4 tok/s: 3 x 16 tokens, so the
        # default's choice between streaming and faults (patches/0010, 8 graphs) is made
        # in the first run.
        Config("repack", "qwen7b-full", 32768, 512, runs=4, n_predict=16),
        Config("repack", "qwen7b-full", 32768, 512, cap_gb=2.5, cap_only=True, runs=4, n_predict=16,
               variants=("ssd", "ssd-stream", "ssd-faults")),
        Config("repack", "qwen7b-full", 65536, 512, variants=("stock", "ram", "ssd"), runs=3, n_predict=16),
        Config("rpc", "smollm2", 8192, 2000),
    ]


@dataclass
class Results:
    quick: bool
    started: str
    machine: dict[str, str]
    runs: list[dict[str, Any]] = field(default_factory=list)  # {"config": {...}, "command", "rows", "seconds"}
    sessions: list[dict[str, Any]] = field(default_factory=list)
    pull: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Results":
        return cls(**json.loads(text))


def _run_config(c: Config, quick: bool, say: Say) -> list[dict[str, Any]]:
    # the sizes are the config's own (quick configs are small already); quick only shortens the runs
    if c.section == "repack":
        return repack.run(28, c.ctx, c.fill, quick, cap=int(c.cap_gb * 1e9) or None, say=say,
                          variants=c.variants or repack.VARIANTS, runs=c.runs or None,
                          n_predict=c.n_predict or None, side_by_side=not c.cap_only)
    if c.section == "rpc":
        return rpc.run(c.model, c.ctx, c.fill, quick, say=say)
    if c.section == "paging":
        return kv_paging.run(c.model, c.ctx, c.fill, fractions=c.fractions, extra=list(c.extra), say=say,
                             runs=2 if quick else None, n_predict=8 if quick else None)
    return kv_backend.run(c.model, c.ctx, c.fill, stock=True, cap_fractions=c.fractions,
                          cap_base="ctx", disk_rates=False, extra=list(c.extra), say=say,
                          uncapped=c.section != "caps", runs=3 if quick else None, n_predict=16 if quick else None)


def run(quick: bool = False, only: tuple[str, ...] = SECTIONS, say: Say = print,
        previous: Results | None = None) -> Results:
    """Run the sections in `only`; with `previous`, keep its rows of the other sections."""
    t0 = time.monotonic()
    res = Results(quick=quick, started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=describe())
    if previous is not None:
        res.runs = [r for r in previous.runs if r["config"]["section"] not in only]
        res.sessions = [] if "sessions" in only else previous.sessions
        res.pull = [] if "pull" in only else previous.pull
        res.started = previous.started + f"; {', '.join(only)} rerun {res.started}"
    for c in plan(quick):
        if c.section not in only:
            continue
        say(f"== {c.section}: {c.model} -c {c.ctx} fill {c.fill} {' '.join(c.extra)}".rstrip())
        t1 = time.monotonic()
        try:
            rows = _run_config(c, quick, say)
        except Exception as e:  # noqa: BLE001 - one failed config must not lose the others' figures
            rows = [{"kind": "error", "error": f"{type(e).__name__}: {e}"}]
            say(f"   failed: {rows[0]['error']}")
        res.runs.append({"config": c.__dict__, "command": c.command(), "rows": rows,
                         "seconds": round(time.monotonic() - t1)})
    if "sessions" in only:
        say("== sessions: restore vs re-prefill")
        res.sessions = session_restore.run(quick, say=say)
    if "pull" in only:
        say("== pull: diskllm vs curl")
        res.pull = pull_speed.run(quick, say=say)
    res.seconds = round(time.monotonic() - t0) + (previous.seconds if previous else 0)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few minutes (a smoke run; not for quoting)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--out", type=Path, help=f"Markdown output (default: {DOCS}, or stdout with --quick)")
    ap.add_argument("--json", type=Path, help="also save the raw rows here")
    ap.add_argument("--from-json", type=Path, help="render saved rows instead of running")
    ap.add_argument("--update", type=Path, metavar="JSON",
                    help="rerun the --only sections on top of these saved rows, save them back, render")
    a = ap.parse_args(argv)
    from diskllm.bench.report import render

    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if a.from_json:
        res = Results.from_json(a.from_json.read_text())
    elif a.update:
        previous = Results.from_json(a.update.read_text())
        res = run(previous.quick, tuple(a.only), say=say, previous=previous)
        a.update.write_text(res.to_json())
    else:
        res = run(a.quick, tuple(a.only), say=say)
        if a.json:
            a.json.write_text(res.to_json())
    text = render(res)
    out = a.out or (None if res.quick else DOCS)
    if out is None:
        print(text)
    else:
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, out)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
