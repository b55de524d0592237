"""Ollama's request and reply shapes <-> llama-server's OpenAI-style chat API."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from diskllm.core.chat import ChatDone
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.index import InstalledModel

# Ollama option -> llama-server request field (same meaning)
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
            "num_predict": "max_tokens", "stop": "stop", "min_p": "min_p",
            "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
            "frequency_penalty": "frequency_penalty", "repeat_last_n": "repeat_last_n"}


class BadRequest(DiskLLMError):
    """The client's request is malformed: HTTP 400."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def sampling(body: dict[str, Any]) -> dict[str, Any]:
    """llama-server parameters from Ollama's `options` and `format`."""
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise BadRequest("options must be an object")
    out = {_OPTIONS[k]: v for k, v in opts.items() if k in _OPTIONS and v is not None}
    if out.get("max_tokens") is not None and out["max_tokens"] < 0:
        del out["max_tokens"]  # Ollama: -1 = no limit
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt}}
    elif fmt not in (None, ""):
        raise BadRequest(f"format must be \"json\" or a JSON schema, got {fmt!r}")
    return out


def num_ctx(body: dict[str, Any]) -> int | None:
    v = (body.get("options") or {}).get("num_ctx")
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise BadRequest(f"num_ctx must be a positive integer, got {v!r}")
    return v


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    msgs = body.get("messages") or []
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
        raise BadRequest("messages must be a list of {role, content}")
    out = [{"role": str(m["role"]), "content": str(m.get("content") or "")} for m in msgs]
    if body.get("system") and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": str(body["system"])})
    return out


def generate_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """/api/generate's prompt (and system) as a chat, so the model's template applies."""
    out = [{"role": "system", "content": str(body["system"])}] if body.get("system") else []
    return out + [{"role": "user", "content": str(body.get("prompt") or "")}]


@dataclass
class Timer:
    """Nanosecond durations for the final reply."""
    load_seconds: float = 0.0
    t0: float = field(default_factory=time.monotonic)

    def final(self, done: ChatDone | None, reason: str | None = None) -> dict[str, Any]:
        t = (done.timings if done else None) or {}
        u = (done.usage if done else None) or {}
        finish = reason or (done.finish_reason if done else None) or "stop"
        return {
            "done": True, "done_reason": "length" if finish == "length" else finish,
            "total_duration": int((time.monotonic() - self.t0) * 1e9),
            "load_duration": int(self.load_seconds * 1e9),
            "prompt_eval_count": int(t.get("prompt_n", u.get("prompt_tokens", 0)) or 0),
            "prompt_eval_duration": int(float(t.get("prompt_ms", 0.0)) * 1e6),
            "eval_count": int(t.get("predicted_n", u.get("completion_tokens", 0)) or 0),
            "eval_duration": int(float(t.get("predicted_ms", 0.0)) * 1e6),
        }


def details(m: InstalledModel) -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": m.arch, "families": [m.arch],
            "parameter_size": "", "quantization_level": m.quant}


def tag_entry(m: InstalledModel) -> dict[str, Any]:
    return {"name": m.name, "model": m.name, "modified_at": m.pulled_at or now_iso(), "size": m.size,
            "digest": (m.digest or "").removeprefix("sha256:"), "details": details(m)}


def show_entry(m: InstalledModel) -> dict[str, Any]:
    template = ""
    if m.extra.get("template"):
        try:
            template = (m.dir / m.extra["template"]).read_text(encoding="utf-8")
        except OSError:
            pass
    return {"license": "", "modelfile": f"FROM {m.path}\n", "parameters": "", "template": template,
            "details": details(m), "modified_at": m.pulled_at or now_iso(),
            "model_info": {"general.architecture": m.arch, f"{m.arch}.context_length": m.context_length},
            "capabilities": ["completion"]}
