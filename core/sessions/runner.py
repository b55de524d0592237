"""Save, restore, switch and chat sessions in one slot of a running llama-server."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

from diskllm.core.chat import ChatDelta, ChatDone, ContextFull, server_error, stream_chat
from diskllm.core.errors import DiskLLMError
from diskllm.core.hashing import sha256_file
from diskllm.core.server import bearer
from diskllm.core.sessions.errors import SessionContextFull, SessionError, SessionMismatch
from diskllm.core.sessions.identity import ModelInfo, check_compatible
from diskllm.core.sessions.locks import SessionLock, SlotLock
from diskllm.core.sessions.records import ReuseReport, RestoreReport, SaveReport, Session, SwitchReport, TurnDone
from diskllm.core.sessions.store import SessionStore, _tmp_name, validate_name


class SessionRunner:
    """Save, restore, switch and chat sessions in one slot of one llama-server.

    slot_dir must be the server's --slot-save-path (DiskLLM servers use
    home.sessions, the store's root: the default)."""

    def __init__(self, base_url: str, store: SessionStore, model_info: ModelInfo, *,
                 slot_id: int = 0, slot_dir: Path | None = None, autosave: bool = True,
                 api_key: str | None = None):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.store = store
        self.model_info = model_info
        self.slot_id = slot_id
        self.slot_dir = Path(slot_dir) if slot_dir else store.root
        self.autosave = autosave
        self.api_key = api_key  # the server's `--api-key`, sent as a Bearer token
        self._headers = bearer(api_key)
        self._lock = asyncio.Lock()
        self._pending: dict[str, int] = {}  # session name -> tokens restored, awaiting a reuse check
        self._slot = SlotLock(store.home.run, self.base_url, slot_id)
        self._held: dict[str, SessionLock] = {}

    def _user(self, name: str) -> str:
        """Who the slot's KV belongs to: this runner's view of session `name`."""
        return f"{os.getpid()}:{id(self)}:{name}"

    def hold(self, name: str) -> None:
        """Take the session's writer lock (SessionBusy naming the holder if another process has it)."""
        if name not in self._held:
            lock = SessionLock(self.store.root, name)
            lock.acquire()
            self._held[name] = lock

    def release(self, name: str | None = None) -> None:
        """Drop the writer lock of one session, or of all."""
        for n in [name] if name else list(self._held):
            lock = self._held.pop(n, None)
            if lock:
                lock.release()

    # low level
    async def _slot_action(self, action: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}/slots/{self.slot_id}?action={action}"
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), headers=self._headers) as c:
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
        async with self._slot.hold(""):
            doc = await self._slot_action("erase")
        return int(doc.get("n_erased", 0))

    # save / restore
    async def save(self, session: Session) -> SaveReport:
        """Write the slot's KV and the transcript into the session folder (atomically)."""
        async with self._lock:
            return await self._save_held(session)

    async def _save_held(self, session: Session) -> SaveReport:
        async with self._slot.hold(self._user(session.name)) as use:
            if use.foreign:  # the slot holds someone else's KV now: keep ours, write the transcript
                t0 = time.perf_counter()
                await asyncio.to_thread(self.store.commit, session, None, keep_kv=True)
                m = session.meta
                return SaveReport(session.name, m.tokens, m.kv_bytes, 0.0, (time.perf_counter() - t0) * 1000)
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
        async with self._lock, self._slot.hold(self._user(name)):
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
                # A restore does not drop the cells the slot held before: a longer previous
                # conversation stays visible to attention and leaks into the next reply.
                await self._slot_action("erase")
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
        async with self._lock, self._slot.hold(self._user(session.name)):
            return await self._verify(session, self._pending.get(session.name, session.meta.tokens))

    async def _verify(self, session: Session, restored: int) -> ReuseReport:
        self._pending.pop(session.name, None)
        msgs = session.payload()
        if not msgs:
            return ReuseReport(0, 0, restored, 0.0)
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), headers=self._headers) as c:
                r = await c.post(f"{self.base_url}/apply-template", json={"messages": msgs})
                r.raise_for_status()
                prompt = r.json()["prompt"]
                r = await c.post(f"{self.base_url}/completion", json={
                    "prompt": prompt, "n_predict": 0, "id_slot": self.slot_id, "cache_prompt": True,
                })
                if r.status_code != 200:
                    raise server_error(r.status_code, r.text[:4000])
                doc = r.json()
        except ContextFull as e:
            raise SessionContextFull(f"session '{session.name}': {e}") from None
        except (httpx.HTTPError, KeyError, ValueError, DiskLLMError) as e:
            raise SessionError(f"reuse check failed: {e}") from None
        t = doc.get("timings") or {}
        cache_n = int(t.get("cache_n", 0))
        total = cache_n + int(t.get("prompt_n", 0))
        return ReuseReport(cache_n, total, restored, float(t.get("prompt_ms", 0.0)))

    async def switch(self, active: Session | None, target_name: str, *, verify: bool = False) -> SwitchReport:
        """Save `active` (if any), then load `target_name` into the same slot; one call."""
        t0 = time.perf_counter()
        self.hold(target_name)
        async with self._lock:
            saved = await self._save_held(active) if active is not None else None
            async with self._slot.hold(self._user(target_name)):
                rep = await self._restore(target_name, self.model_info)
                if verify:
                    rep.reuse = await self._verify(self.store.load(target_name), rep.restored_tokens)
                    self._finish_report(rep)
        if active is not None and active.name != target_name:
            self.release(active.name)
        return SwitchReport(saved, rep, (time.perf_counter() - t0) * 1000)

    async def open(self, name: str, *, system: str | None = None,
                   verify: bool = True) -> tuple[Session, RestoreReport | None]:
        """Load (and restore) a session, or create it for this model if it does not exist.

        A damaged kv.bin is not fatal: the transcript is the source of truth, so
        the report says why and the slot is re-prefilled from it."""
        validate_name(name)
        self.hold(name)
        if not self.store.exists(name):
            if self.store.path(name).exists():  # folder without meta: damaged
                self.store.load_meta(name)
            s = self.store.create(name, self.model_info, system=system)
            return s, None
        session = self.store.load(name)
        check_compatible(session.meta, self.model_info)
        try:
            rep = await self.restore(name, verify=verify)
        except (SessionMismatch, SessionContextFull):
            raise
        except SessionError as e:  # corrupt kv.bin, or the server refused the state
            await self.erase()
            rep = RestoreReport(name, 0, 0.0, 0.0, fallback="re-prefill", note=str(e))
            if verify:
                async with self._lock, self._slot.hold(self._user(name)):
                    rep.reuse = await self._verify(session, 0)
        return session, rep

    async def _reload(self, session: Session) -> None:
        """Put the session's saved KV back into the slot (or empty it): never reuse another's."""
        try:
            meta = self.store.load_meta(session.name) if self.store.exists(session.name) else None
            if meta is not None and meta.kv_sha256:
                await self._restore(session.name, self.model_info)
                return
        except SessionError:
            pass  # damaged kv.bin: the transcript re-prefills
        await self._slot_action("erase")

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
        self.hold(session.name)
        async with self._lock, self._slot.hold(self._user(session.name)) as use:
            if use.foreign:  # another session used the slot since our last turn: our KV back first
                await self._reload(session)
            async for ev in stream_chat(self.base_url, msgs, api_key=self.api_key, **params):
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
                total = int(out.usage.get("total_tokens") or 0)
                if out.finish_reason == "length" and total + 1 >= self.model_info.ctx:
                    out.context_full = total
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
