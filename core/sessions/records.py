"""The records sessions are made of and the reports their operations return."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from diskllm.core.chat import ChatDone


FORMAT = 1


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "str | None": (str,), "int": (int,), "int | None": (int,), "float": (int, float),
}


def json_type(v: object) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean",
            list: "a list", dict: "an object"}.get(type(v), "null")


@dataclass
class SessionMeta:
    name: str
    model: str
    model_path: str
    model_fingerprint: str
    ctx: int
    model_digest: str | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    kv_backend: str = "ssd"
    build_id: str | None = None
    arch: str | None = None
    sliding_window: int | None = None
    tokens: int = 0            # tokens in the saved slot state (0 = no kv.bin yet)
    kv_bytes: int = 0
    kv_sha256: str | None = None
    messages: int = 0
    created: float = 0.0
    updated: float = 0.0
    format: int = FORMAT

    @classmethod
    def from_json(cls, d: dict) -> "SessionMeta":
        """TypeError naming the first field of the wrong type (a hand-edited meta.json)."""
        if not isinstance(d, dict):
            raise TypeError("not a JSON object")
        known = {f.name: f for f in fields(cls)}
        vals = {k: v for k, v in d.items() if k in known}
        for k, v in vals.items():
            want = _FIELD_TYPES[known[k].type]
            if v is None and "None" in known[k].type:
                continue
            if isinstance(v, bool) or not isinstance(v, want):
                raise TypeError(f"{k} is {json_type(v)}, expected {known[k].type}")
        return cls(**vals)


@dataclass
class Session:
    name: str
    meta: SessionMeta
    messages: list[dict[str, str]] = field(default_factory=list)
    system: str | None = None

    def payload(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.messages)


@dataclass
class SessionInfo:
    name: str
    model: str
    tokens: int
    size_bytes: int
    updated: float
    messages: int = 0
    error: str | None = None  # set when meta.json is unreadable

    @property
    def damage(self) -> str | None:
        """What is wrong, without the "session 'x': " prefix (the row names it already)."""
        return self.error.split(": ", 1)[-1] if self.error else None


@dataclass
class SaveReport:
    name: str
    tokens: int
    bytes: int
    save_ms: float   # server-side (llama-server's timings.save_ms)
    wall_ms: float   # whole save: server write + fsync + checksum + folder swap


@dataclass
class ReuseReport:
    reused: int          # timings.cache_n: prompt tokens taken from the restored KV
    total: int           # tokens of the transcript prompt
    restored: int        # tokens the restore put into the slot
    prompt_ms: float     # time the server spent on the rest (re-prefill when reused == 0)

    @property
    def ok(self) -> bool:
        return self.restored == 0 or self.reused > 0

    def describe(self) -> str:
        if self.restored == 0:
            return "nothing restored"
        if self.reused > 0:
            return f"reused {self.reused}/{self.total} tokens from the restored KV"
        return (f"no reuse after restore (0/{self.total} tokens): the server re-prefilled the "
                f"transcript in {self.prompt_ms:.0f} ms")


@dataclass
class RestoreReport:
    name: str
    restored_tokens: int
    restore_ms: float        # server-side (llama-server's timings.restore_ms)
    wall_ms: float           # checksum + restore request
    check_ms: float = 0.0    # sha256 check of kv.bin before the restore
    reuse: ReuseReport | None = None
    fallback: str | None = None  # "re-prefill" when the KV could not be used
    note: str | None = None


@dataclass
class SwitchReport:
    saved: SaveReport | None
    restored: RestoreReport
    total_ms: float


@dataclass
class TurnDone(ChatDone):
    """ChatDone of a session turn, plus what the session layer did around it."""
    cache_n: int | None = None
    prompt_tokens: int | None = None
    reuse: ReuseReport | None = None   # set on the first turn after a restore
    save: SaveReport | None = None     # the autosave after the reply
    save_error: str | None = None
    context_full: int | None = None    # tokens, when the reply stopped because the context is full
