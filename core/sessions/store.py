"""Sessions on disk: one folder each under home.sessions, committed atomically."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import struct
import time
from dataclasses import asdict
from pathlib import Path

from diskllm.core.hashing import sha256_file
from diskllm.core.paths import Home
from diskllm.core.sessions.errors import SessionCorrupt, SessionError, SessionExists, SessionNotFound
from diskllm.core.sessions.fsync import _exchange, _fsync_dir, _fsync_file, _write_synced
from diskllm.core.sessions.identity import ModelInfo
from diskllm.core.sessions.records import FORMAT, Session, SessionInfo, SessionMeta


STATE_MAGIC = 0x67677371  # 'ggsq', llama.cpp LLAMA_STATE_SEQ_MAGIC
STATE_VERSION = 3  # LLAMA_STATE_SEQ_VERSION on this pin
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_TMP_PREFIXES = (".stage-", ".old-", ".trash-", ".kvtmp-", ".kvrestore-")


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else repr(name)[:80]
        raise SessionError(
            f"invalid session name '{shown}': use 1-64 letters, digits, '.', '_' or '-', not starting with '.'"
        )
    return name



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
        except TypeError as e:  # a field of the wrong type: say which
            raise SessionCorrupt(f"session '{name}': meta.json is damaged ({e})") from None
        except (OSError, ValueError, AttributeError) as e:
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
        stage.mkdir(mode=0o700)
        try:
            os.chmod(stage, 0o700)  # mkdir's mode is masked by the umask
            meta = session.meta
            if kv_tmp is not None:
                os.chmod(kv_tmp, 0o600)  # written by llama-server with its umask
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
