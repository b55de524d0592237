"""Every DISKLLM_* environment variable, in one table with its meaning.

Code reads them through `env()` / `env_flag()`, which refuse names missing from
the table, so the table (and docs/config.md, checked against it by a test)
cannot fall behind the code."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    name: str
    meaning: str


ENV: tuple[EnvVar, ...] = (
    EnvVar("DISKLLM_HOME", "home directory (default `~/.diskllm`)"),
    EnvVar("DISKLLM_LLAMA_SERVER", "llama-server binary; overrides `server_binary`"),
    EnvVar("DISKLLM_BUILD_CACHE", "where built servers are cached (default `$DISKLLM_HOME/bin`)"),
    EnvVar("DISKLLM_TEST_MODELS", "test-model cache (default `~/.cache/diskllm/test-models`)"),
    EnvVar("DISKLLM_API_HOST", "`diskllm serve` address, `host` or `host:port`; overrides `api_host`/`api_port`"),
    EnvVar("DISKLLM_API_KEY", "Bearer key of `diskllm serve` (and the key clients send); overrides `api_key`"),
    EnvVar("OLLAMA_HOST", "read like Ollama does when `DISKLLM_API_HOST` is unset: `[http://]host[:port]`"),
    EnvVar("DISKLLM_DEBUG=1", "tracebacks for unexpected errors"),
    EnvVar("DISKLLM_KV_PREFETCH_FORCE=1", "(read by llama-server) keep the read-ahead on although nothing is "
                                          "paged; benchmarks use it to measure its cost"),
    EnvVar("DISKLLM_KV_READ", "(read by llama-server) with `--kv-budget`, how the streamed weights are read: "
                              "`populate` as 2 MiB folios (MADV_POPULATE_READ through a MADV_HUGEPAGE twin "
                              "mapping, patches/0015-0016), `willneed` by MADV_WILLNEED (4 KiB folios), `direct` "
                              "with O_DIRECT into windows swapped over the mapping (patches/0009), `pread` with "
                              "blocking pread; default: populate while whole 2 MiB weight blocks are half the "
                              "working set or more, else willneed (0016); benchmarks pin one"),
    EnvVar("DISKLLM_KV_POPULATE_THREADS", "(read by llama-server) threads reading 2 MiB folios (default 2; 0 = "
                                          "on the read-ahead helper, one at a time, as patches/0015 did)"),
    EnvVar("DISKLLM_KV_PATH", "(read by llama-server) with `--kv-budget auto`: `stream` or `faults` fixes how "
                              "what does not fit is read; default: both are timed on the live decode and the "
                              "faster is kept (patches/0010); benchmarks pin one"),
    EnvVar("DISKLLM_KV_PROG=off", "(read by llama-server) while streaming, ask for a large weight whole "
                                  "instead of following compute through its node (patches/0011); "
                                  "benchmarks compare the two"),
)
_NAMES = {v.name.split("=")[0] for v in ENV}


def env(name: str) -> str | None:
    """The variable's value; unset or empty -> None."""
    if name not in _NAMES:
        raise KeyError(f"{name} is not in diskllm.core.env.ENV: add it there (and to docs/config.md)")
    return os.environ.get(name) or None


def env_flag(name: str) -> bool:
    return env(name) == "1"


def markdown_table() -> str:
    """The Environment table of docs/config.md."""
    rows = ["| variable | effect |", "|---|---|"]
    rows += [f"| `{v.name}` | {v.meaning} |" for v in ENV]
    return "\n".join(rows) + "\n"
