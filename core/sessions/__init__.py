"""Sessions: a chat transcript plus the server slot's KV state, saved and restored.

A session is a folder `$DISKLLM_HOME/sessions/<name>/` holding

- `meta.json`       model (name, path, fingerprint, digest), ctx, cache types,
                    KV backend, server build id, token count, kv.bin size and
                    sha256, created/updated;
- `transcript.json` the messages (and the system prompt);
- `kv.bin`          the slot state written by llama-server (`/slots/0?action=save`).

Crash safety: a save builds the new folder beside the old one (`.stage-*`),
fsyncs every file, then swaps the two folders with one `renameat2(RENAME_EXCHANGE)`
(or two renames plus recovery where the filesystem lacks it). A crash at any
moment leaves the old or the new session whole; leftovers of dead processes are
cleaned up by the next store operation.

The server writes slot files only as plain names inside its --slot-save-path
(which is this folder's parent), so the KV goes through a temp name there and
is moved in; a restore hard-links kv.bin to a temp name for the server to read.

Core only: no UI imports. The TUI uses SessionStore and SessionRunner.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

from diskllm.core.chat import ChatDelta, ChatDone, stream_chat
from diskllm.core.errors import DiskLLMError
from diskllm.core.hashing import sha256_file
from diskllm.core.paths import Home

FORMAT = 1
STATE_MAGIC = 0x67677371  # 'ggsq', llama.cpp LLAMA_STATE_SEQ_MAGIC
STATE_VERSION = 3  # LLAMA_STATE_SEQ_VERSION on this pin
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_TMP_PREFIXES = (".stage-", ".old-", ".trash-", ".kvtmp-", ".kvrestore-")


# --- errors ---------------------------------------------------------------

class SessionError(DiskLLMError):
    """Any session problem; one line for the CLI."""


class SessionNotFound(SessionError):
    pass


class SessionExists(SessionError):
    pass


class SessionCorrupt(SessionError):
    """meta.json or kv.bin is unreadable, truncated or does not match its checksum."""


class SessionMismatch(SessionError):
    """The session cannot go into this server: other model, cache types or too small a ctx."""


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else repr(name)[:80]
        raise SessionError(
            f"invalid session name '{shown}': use 1-64 letters, digits, '.', '_' or '-', not starting with '.'"
        )
    return name


# --- model identity --------------------------------------------------------

def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """Cheap identity of a GGUF file: sha256 of its size, first MiB and 16 spread 64 KiB samples.

    Reads about 2 MiB whatever the model size; different quants, finetunes and
    truncations all differ."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        size = p.stat().st_size
        h.update(str(size).encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > (1 << 20):
                for i in range(16):
                    f.seek((size - (1 << 16)) * (i + 1) // 16)
                    h.update(f.read(1 << 16))
    except OSError as e:
        raise SessionError(f"cannot read model {p}: {e.strerror}") from None
    return "fp1:" + h.hexdigest()


def _cache_types(argv: list[str]) -> tuple[str, str]:
    k = v = "f16"
    for i, a in enumerate(argv[:-1]):
        if a in ("-ctk", "--cache-type-k"):
            k = argv[i + 1]
        elif a in ("-ctv", "--cache-type-v"):
            v = argv[i + 1]
    for a in argv:
        if a.startswith("--cache-type-k="):
            k = a.split("=", 1)[1]
        elif a.startswith("--cache-type-v="):
            v = a.split("=", 1)[1]
    return k, v


def build_id_of(binary: str | os.PathLike[str] | None) -> str | None:
    """The build cache key (build.json "key") of a llama-server binary, if it has one."""
    if not binary:
        return None
    with contextlib.suppress(OSError, ValueError):
        doc = json.loads((Path(binary).parent / "build.json").read_text(encoding="utf-8"))
        key = doc.get("key")
        return f"{doc.get('flavor', 'diskllm')}-{key[:16]}" if key else None
    return None


def _index_digest(home: Home | None, path: Path) -> str | None:
    if home is None:
        return None
    with contextlib.suppress(Exception):
        from diskllm.core.models.index import ModelIndex
        for m in ModelIndex(home).all():
            if Path(m.path).resolve() == path.resolve():
                return m.digest
    return None


@dataclass
class ModelInfo:
    """What a session must match: the model and KV layout of the server it goes into."""
    name: str
    path: str
    fingerprint: str
    ctx: int
    digest: str | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    kv_backend: str = "ssd"
    build_id: str | None = None
    arch: str | None = None
    sliding_window: int | None = None  # set for SWA/iSWA models (restores may not be reusable)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], *, ctx: int, name: str | None = None,
                  cache_type_k: str = "f16", cache_type_v: str = "f16", kv_backend: str = "ssd",
                  binary: str | os.PathLike[str] | None = None, home: Home | None = None) -> "ModelInfo":
        p = Path(path).resolve()
        arch = window = None
        with contextlib.suppress(Exception):
            from diskllm.core.models.gguf import read_gguf_info
            gi = read_gguf_info(p)
            arch = gi.arch
            window = gi.sliding_window if gi.is_swa else None
        return cls(name=name or p.stem, path=str(p), fingerprint=model_fingerprint(p), ctx=ctx,
                   digest=_index_digest(home, p), cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                   kv_backend=kv_backend, build_id=build_id_of(binary), arch=arch, sliding_window=window)

    @classmethod
    def from_entry(cls, entry: Any, home: Home | None = None) -> "ModelInfo":
        """From a ServerEntry (registry of running servers) or a RunningServer."""
        entry = getattr(entry, "entry", entry)
        k, v = _cache_types(list(entry.argv))
        return cls.from_path(entry.model_path, ctx=entry.ctx, name=entry.model, cache_type_k=k,
                             cache_type_v=v, kv_backend=entry.kv_backend, binary=entry.binary, home=home)

    @property
    def kind(self) -> str:
        return "iSWA/SWA" if self.sliding_window else "dense"


# --- stored data -------------------------------------------------------------

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
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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


# --- filesystem helpers ----------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False if unsupported here."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = _libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_name(prefix: str, name: str, suffix: str = "") -> str:
    return f"{prefix}{name}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def _tmp_owner(fname: str) -> tuple[str, int] | None:
    """(session name, pid) of a temp entry, or None if the name is not ours."""
    for pre in _TMP_PREFIXES:
        if fname.startswith(pre):
            rest = fname[len(pre):].removesuffix(".bin")
            parts = rest.rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit():
                return parts[0], int(parts[1])
    return None


def read_state_header(path: Path) -> tuple[int, int]:
    """(version, token words) from a llama.cpp sequence-state file; SessionCorrupt if not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise SessionCorrupt(f"cannot read {path}: {e.strerror}") from None
    if len(head) < 12:
        raise SessionCorrupt(f"{path} is truncated ({size} bytes)")
    magic, version, n = struct.unpack("<III", head)
    if magic != STATE_MAGIC:
        raise SessionCorrupt(f"{path} is not a llama.cpp slot state (bad magic)")
    if 12 + 4 * n > size:
        raise SessionCorrupt(f"{path} is truncated ({size} bytes, header says {n} token words)")
    return version, n


# --- the store ----------------------------------------------------------------------

class SessionStore:
    """Sessions under home.sessions (the servers' --slot-save-path)."""

    def __init__(self, home: Home | str | os.PathLike[str]):
        self.home = home if isinstance(home, Home) else Home(Path(home))
        self.root = self.home.sessions

    # paths
    def path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        self._recover(name)
        return (self.path(name) / "meta.json").is_file()

    # housekeeping
    def cleanup(self) -> None:
        """Remove temp files and folders left by dead processes; finish interrupted swaps."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            owner = _tmp_owner(p.name)
            if owner is None:
                continue
            name, pid = owner
            if _pid_alive(pid) and pid != os.getpid():
                continue
            if pid == os.getpid():
                continue  # ours and maybe in use
            if p.name.startswith(".old-") and NAME_RE.fullmatch(name) and not (self.root / name).exists():
                with contextlib.suppress(OSError):
                    os.rename(p, self.root / name)  # crash between the two fallback renames
                    continue
            _remove(p)

    def _recover(self, name: str) -> None:
        d = self.root / name
        if d.exists() or not self.root.is_dir():
            return
        for p in self.root.glob(f".old-{name}-*"):
            owner = _tmp_owner(p.name)
            if owner and owner[0] == name and not _pid_alive(owner[1]):
                with contextlib.suppress(OSError):
                    os.rename(p, d)
                    return

    # reading
    def list(self) -> list[SessionInfo]:
        self.cleanup()
        out: list[SessionInfo] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if not d.is_dir() or not NAME_RE.fullmatch(d.name):
                continue
            if not (d / "meta.json").exists() and not (d / "transcript.json").exists():
                continue
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            try:
                m = self.load_meta(d.name)
                out.append(SessionInfo(d.name, m.model, m.tokens, size, m.updated, m.messages))
            except SessionError as e:
                out.append(SessionInfo(d.name, "?", 0, size, d.stat().st_mtime, 0, error=str(e)))
        return out

    def load_meta(self, name: str) -> SessionMeta:
        self._recover(name)
        p = self.path(name) / "meta.json"
        if not p.parent.is_dir():
            raise SessionNotFound(f"no session '{name}' (see 'diskllm sessions')")
        try:
            return SessionMeta.from_json(json.loads(p.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise SessionCorrupt(f"session '{name}': meta.json is missing") from None
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise SessionCorrupt(f"session '{name}': meta.json is unreadable ({type(e).__name__})") from None

    def load_transcript(self, name: str) -> tuple[list[dict[str, str]], str | None]:
        """(messages, system prompt); readable even when meta.json or kv.bin are damaged."""
        self._recover(name)
        p = self.path(name) / "transcript.json"
        if not p.parent.is_dir():
            raise SessionNotFound(f"no session '{name}' (see 'diskllm sessions')")
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in doc["messages"]]
            return msgs, doc.get("system")
        except FileNotFoundError:
            raise SessionCorrupt(f"session '{name}': transcript.json is missing") from None
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise SessionCorrupt(f"session '{name}': transcript.json is unreadable ({type(e).__name__})") from None

    def load(self, name: str) -> Session:
        meta = self.load_meta(name)
        messages, system = self.load_transcript(name)
        return Session(name, meta, messages, system)

    def check_kv(self, name: str, meta: SessionMeta | None = None) -> Path | None:
        """Verify kv.bin against meta (size, header, sha256); None when the session has no KV yet."""
        meta = meta or self.load_meta(name)
        kv = self.path(name) / "kv.bin"
        if not meta.kv_sha256:
            return None
        if not kv.is_file():
            raise SessionCorrupt(f"session '{name}': kv.bin is missing")
        size = kv.stat().st_size
        if size != meta.kv_bytes:
            raise SessionCorrupt(f"session '{name}': kv.bin is {size} bytes, expected {meta.kv_bytes} (truncated?)")
        version, _ = read_state_header(kv)
        if version != STATE_VERSION:
            raise SessionCorrupt(f"session '{name}': kv.bin has state version {version}, this server reads {STATE_VERSION}")
        if sha256_file(kv) != meta.kv_sha256:
            raise SessionCorrupt(f"session '{name}': kv.bin does not match its checksum (corrupt)")
        return kv

    # writing
    def create(self, name: str, model: ModelInfo, *, system: str | None = None,
               messages: list[dict[str, str]] | None = None) -> Session:
        validate_name(name)
        if self.exists(name) or self.path(name).exists():
            raise SessionExists(f"session '{name}' already exists")
        now = time.time()
        meta = SessionMeta(
            name=name, model=model.name, model_path=model.path, model_fingerprint=model.fingerprint,
            model_digest=model.digest, ctx=model.ctx, cache_type_k=model.cache_type_k,
            cache_type_v=model.cache_type_v, kv_backend=model.kv_backend, build_id=model.build_id,
            arch=model.arch, sliding_window=model.sliding_window, created=now, updated=now,
        )
        s = Session(name, meta, list(messages or []), system)
        self.commit(s, kv_tmp=None)
        return s

    def commit(self, session: Session, kv_tmp: Path | None, *, keep_kv: bool = False) -> None:
        """Write the session folder anew and swap it in atomically.

        kv_tmp: a fresh slot file (moved in); keep_kv: reuse the current kv.bin (hard link)."""
        self.home.ensure()
        name = validate_name(session.name)
        final = self.root / name
        stage = self.root / _tmp_name(".stage-", name)
        stage.mkdir()
        try:
            meta = session.meta
            if kv_tmp is not None:
                _fsync_file(kv_tmp)
                os.replace(kv_tmp, stage / "kv.bin")
            elif keep_kv and (final / "kv.bin").is_file() and meta.kv_sha256:
                os.link(final / "kv.bin", stage / "kv.bin")
            else:
                meta.tokens, meta.kv_bytes, meta.kv_sha256 = 0, 0, None
            meta.messages = len(session.messages)
            meta.name = name
            doc = {"format": FORMAT, "system": session.system, "messages": session.messages}
            _write_synced(stage / "transcript.json",
                          json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8"))
            _write_synced(stage / "meta.json", json.dumps(asdict(meta), indent=2).encode("utf-8"))
            _fsync_dir(stage)
            self._swap_in(stage, final)
        except BaseException:
            _remove(stage)
            raise

    def _swap_in(self, stage: Path, final: Path) -> None:
        if not final.exists():
            os.rename(stage, final)
        elif _exchange(stage, final):
            _remove(stage)  # now holds the old folder
        else:
            old = self.root / _tmp_name(".old-", final.name)
            os.rename(final, old)
            os.rename(stage, final)
            _remove(old)
        _fsync_dir(self.root)

    def rename(self, old: str, new: str) -> None:
        validate_name(old)
        validate_name(new)
        src, dst = self.path(old), self.path(new)
        if not src.is_dir():
            raise SessionNotFound(f"no session '{old}'")
        if dst.exists():
            raise SessionExists(f"session '{new}' already exists")
        os.rename(src, dst)
        # meta.name follows the folder; a stale name in meta is harmless but keep it tidy
        with contextlib.suppress(SessionError, OSError):
            s = self.load(new)
            self.commit(s, kv_tmp=None, keep_kv=True)
        _fsync_dir(self.root)

    def delete(self, name: str) -> None:
        d = self.path(name)
        if not d.is_dir():
            raise SessionNotFound(f"no session '{name}'")
        trash = self.root / _tmp_name(".trash-", name)
        os.rename(d, trash)
        _fsync_dir(self.root)
        _remove(trash)

    def export_markdown(self, name: str) -> str:
        messages, system = self.load_transcript(name)
        try:
            meta: SessionMeta | None = self.load_meta(name)
        except SessionError:
            meta = None
        lines = [f"# Session {name}", ""]
        if meta:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(meta.updated))
            lines += [f"Model: {meta.model} · {meta.tokens} tokens · ctx {meta.ctx} · updated {when}", ""]
        if system:
            lines += ["## System", "", system, ""]
        for m in messages:
            lines += [f"## {m['role'].capitalize()}", "", m["content"], ""]
        return "\n".join(lines).rstrip() + "\n"


def _remove(p: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink()


# --- compatibility rule ------------------------------------------------------------

def check_compatible(meta: SessionMeta, info: ModelInfo) -> None:
    """Refuse a restore that cannot be right. Rules (docs/sessions.md):

    - same model file identity (fingerprint), else refused;
    - same K and V cache types, else refused (the state holds raw cache rows);
    - the server's ctx must exceed the saved tokens (room for at least the next
      token); a different ctx that fits is fine, as is another KV backend (ssd/ram)."""
    if meta.model_fingerprint != info.fingerprint:
        raise SessionMismatch(
            f"session '{meta.name}' belongs to model {meta.model} ({meta.model_fingerprint[4:16]}), "
            f"the server runs {info.name} ({info.fingerprint[4:16]})"
        )
    if (meta.cache_type_k, meta.cache_type_v) != (info.cache_type_k, info.cache_type_v):
        raise SessionMismatch(
            f"session '{meta.name}' was saved with cache types k={meta.cache_type_k} v={meta.cache_type_v}, "
            f"the server uses k={info.cache_type_k} v={info.cache_type_v}"
        )
    if meta.tokens and meta.tokens >= info.ctx:
        raise SessionMismatch(
            f"session '{meta.name}' holds {meta.tokens} tokens (saved at ctx {meta.ctx}), "
            f"the server's ctx is {info.ctx}: start it with --ctx > {meta.tokens}"
        )


# --- talking to the server -------------------------------------------------------------

class SessionRunner:
    """Save, restore, switch and chat sessions in one slot of one llama-server.

    slot_dir must be the server's --slot-save-path (DiskLLM servers use
    home.sessions, the store's root: the default)."""

    def __init__(self, base_url: str, store: SessionStore, model_info: ModelInfo, *,
                 slot_id: int = 0, slot_dir: Path | None = None, autosave: bool = True):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.store = store
        self.model_info = model_info
        self.slot_id = slot_id
        self.slot_dir = Path(slot_dir) if slot_dir else store.root
        self.autosave = autosave
        self._lock = asyncio.Lock()
        self._pending: dict[str, int] = {}  # session name -> tokens restored, awaiting a reuse check

    # low level
    async def _slot_action(self, action: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}/slots/{self.slot_id}?action={action}"
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as c:
                r = await c.post(url, json=body or {})
        except httpx.TransportError as e:
            raise SessionError(f"slot {action} failed: cannot reach {self.base_url}: {e}") from None
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        if r.status_code != 200:
            msg = (doc.get("error") or {}).get("message") if isinstance(doc, dict) else None
            raise SessionError(f"slot {action} failed: HTTP {r.status_code}: {msg or r.text[:200]}")
        return doc

    async def erase(self) -> int:
        doc = await self._slot_action("erase")
        return int(doc.get("n_erased", 0))

    # save / restore
    async def save(self, session: Session) -> SaveReport:
        """Write the slot's KV and the transcript into the session folder (atomically)."""
        async with self._lock:
            return await self._save(session)

    async def _save(self, session: Session) -> SaveReport:
        t0 = time.perf_counter()
        self.store.home.ensure()
        tmp_name = _tmp_name(".kvtmp-", session.name, ".bin")
        tmp = self.slot_dir / tmp_name
        try:
            doc = await self._slot_action("save", {"filename": tmp_name})
            if not tmp.is_file():
                raise SessionError(
                    f"the server did not write {tmp}: is its --slot-save-path {self.slot_dir}?")
            sha = await asyncio.to_thread(sha256_file, tmp)
            meta = session.meta
            meta.tokens = int(doc.get("n_saved", 0))
            meta.kv_bytes = tmp.stat().st_size
            meta.kv_sha256 = sha
            meta.updated = time.time()
            mi = self.model_info
            meta.ctx, meta.kv_backend, meta.build_id = mi.ctx, mi.kv_backend, mi.build_id
            await asyncio.to_thread(self.store.commit, session, tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        save_ms = float((doc.get("timings") or {}).get("save_ms", 0.0))
        return SaveReport(session.name, meta.tokens, meta.kv_bytes, save_ms, (time.perf_counter() - t0) * 1000)

    async def restore(self, name: str, model_info: ModelInfo | None = None, *,
                      verify: bool = False) -> RestoreReport:
        """Check compatibility and kv.bin, then load it into the slot.

        verify=True re-sends the transcript at once (n_predict 0) and reports reuse;
        otherwise the first chat_turn reports it (TurnDone.reuse)."""
        async with self._lock:
            rep = await self._restore(name, model_info or self.model_info)
            if verify:
                rep.reuse = await self._verify(self.store.load(name), rep.restored_tokens)
                self._finish_report(rep)
            return rep

    async def _restore(self, name: str, info: ModelInfo) -> RestoreReport:
        t0 = time.perf_counter()
        meta = self.store.load_meta(name)
        check_compatible(meta, info)
        kv = await asyncio.to_thread(self.store.check_kv, name, meta)
        check_ms = (time.perf_counter() - t0) * 1000
        if kv is None:  # a session without KV yet: start from an empty slot
            await self._slot_action("erase")
            return RestoreReport(name, 0, 0.0, (time.perf_counter() - t0) * 1000, check_ms,
                                 note="no saved KV yet")
        link_name = _tmp_name(".kvrestore-", name, ".bin")
        link = self.slot_dir / link_name
        try:
            try:
                os.link(kv, link)
            except OSError:
                await asyncio.to_thread(shutil.copyfile, kv, link)
            try:
                doc = await self._slot_action("restore", {"filename": link_name})
            except SessionError as e:
                # llama-server clears the slot when a restore fails: nothing stale is left
                raise SessionError(f"session '{name}': {e} (the slot was cleared)") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
        n = int(doc.get("n_restored", 0))
        self._pending[name] = n
        note = None
        if meta.build_id and info.build_id and meta.build_id != info.build_id:
            note = f"saved by server build {meta.build_id}, restored into {info.build_id}"
        return RestoreReport(name, n, float((doc.get("timings") or {}).get("restore_ms", 0.0)),
                             (time.perf_counter() - t0) * 1000, check_ms, note=note)

    def _finish_report(self, rep: RestoreReport) -> None:
        if rep.reuse is not None and not rep.reuse.ok:
            rep.fallback = "re-prefill"
            self._pending.pop(rep.name, None)

    async def verify_reuse(self, session: Session) -> ReuseReport:
        """Re-send the transcript (no generation) and read timings.cache_n."""
        async with self._lock:
            return await self._verify(session, self._pending.get(session.name, session.meta.tokens))

    async def _verify(self, session: Session, restored: int) -> ReuseReport:
        self._pending.pop(session.name, None)
        msgs = session.payload()
        if not msgs:
            return ReuseReport(0, 0, restored, 0.0)
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as c:
                r = await c.post(f"{self.base_url}/apply-template", json={"messages": msgs})
                r.raise_for_status()
                prompt = r.json()["prompt"]
                r = await c.post(f"{self.base_url}/completion", json={
                    "prompt": prompt, "n_predict": 0, "id_slot": self.slot_id, "cache_prompt": True,
                })
                r.raise_for_status()
                doc = r.json()
        except (httpx.HTTPError, KeyError, ValueError) as e:
            raise SessionError(f"reuse check failed: {e}") from None
        t = doc.get("timings") or {}
        cache_n = int(t.get("cache_n", 0))
        total = cache_n + int(t.get("prompt_n", 0))
        return ReuseReport(cache_n, total, restored, float(t.get("prompt_ms", 0.0)))

    async def switch(self, active: Session | None, target_name: str, *, verify: bool = False) -> SwitchReport:
        """Save `active` (if any), then load `target_name` into the same slot; one call."""
        t0 = time.perf_counter()
        async with self._lock:
            saved = await self._save(active) if active is not None else None
            rep = await self._restore(target_name, self.model_info)
            if verify:
                rep.reuse = await self._verify(self.store.load(target_name), rep.restored_tokens)
                self._finish_report(rep)
        return SwitchReport(saved, rep, (time.perf_counter() - t0) * 1000)

    async def open(self, name: str, *, system: str | None = None,
                   verify: bool = True) -> tuple[Session, RestoreReport | None]:
        """Load (and restore) a session, or create it for this model if it does not exist.

        A damaged kv.bin is not fatal: the transcript is the source of truth, so
        the report says why and the slot is re-prefilled from it."""
        if not self.store.exists(name):
            validate_name(name)
            if self.store.path(name).exists():  # folder without meta: damaged
                self.store.load_meta(name)
            s = self.store.create(name, self.model_info, system=system)
            return s, None
        session = self.store.load(name)
        check_compatible(session.meta, self.model_info)
        try:
            rep = await self.restore(name, verify=verify)
        except SessionMismatch:
            raise
        except SessionError as e:  # corrupt kv.bin, or the server refused the state
            await self.erase()
            rep = RestoreReport(name, 0, 0.0, 0.0, fallback="re-prefill", note=str(e))
            if verify:
                async with self._lock:
                    rep.reuse = await self._verify(session, 0)
        return session, rep

    # chat
    async def chat_turn(self, session: Session, user_text: str, **params: Any
                        ) -> AsyncIterator[ChatDelta | TurnDone]:
        """Send the transcript plus user_text to the session's slot; stream the reply.

        Appends both messages to the transcript and autosaves (KV + transcript)
        after the reply; the final event is a TurnDone (a ChatDone) with cache_n,
        the reuse check of a preceding restore and the save report."""
        msgs = session.payload() + [{"role": "user", "content": user_text}]
        params.setdefault("id_slot", self.slot_id)
        params.setdefault("cache_prompt", True)
        reply: list[str] = []
        done: ChatDone | None = None
        async with self._lock:
            async for ev in stream_chat(self.base_url, msgs, **params):
                if isinstance(ev, ChatDelta):
                    reply.append(ev.text)
                    yield ev
                else:
                    done = ev
            out = TurnDone(**{f.name: getattr(done, f.name) for f in fields(ChatDone)}) if done else TurnDone()
            t = out.timings or {}
            out.cache_n = t.get("cache_n")
            if out.usage:
                out.prompt_tokens = out.usage.get("prompt_tokens")
            restored = self._pending.pop(session.name, None)
            if restored is not None and out.cache_n is not None:
                total = out.prompt_tokens or (out.cache_n + int(t.get("prompt_n", 0)))
                out.reuse = ReuseReport(int(out.cache_n), int(total), restored, float(t.get("prompt_ms", 0.0)))
            session.messages.append({"role": "user", "content": user_text})
            session.messages.append({"role": "assistant", "content": "".join(reply)})
            if self.autosave:
                try:
                    out.save = await self._save(session)
                except (SessionError, OSError) as e:
                    out.save_error = str(e)
        yield out
