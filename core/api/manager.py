"""One llama-server per model, loaded on first use, stopped when idle past keep_alive.

Servers start through core.launch (the same resolve/flags as `run`, SSD KV), so
they are in the run registry and `diskllm ps` and the workbench list them."""
from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import psutil

from diskllm.core.api.embed import DEFAULT_EMBED_CTX, embed_server_args
from diskllm.core.errors import DiskLLMError
from diskllm.core.launch import LaunchRequest, launch
from diskllm.core.models.index import InstalledModel, ModelIndex
from diskllm.core.paths import Home
from diskllm.core.server import RunningServer, is_alive, stop_server


def _key(model: str, embed: bool) -> str:
    return f"{model} (embeddings)" if embed else model


class UnknownModel(DiskLLMError):
    """A model name that is not installed: HTTP 404."""


class LoadFailed(DiskLLMError):
    """The model's llama-server did not come up: HTTP 500."""


@dataclass
class Loaded:
    model: InstalledModel
    server: RunningServer
    ctx: int
    load_seconds: float
    # Its own connection pool: a reloaded server may get the same port, and a pooled
    # connection to the dead one would fail the first request after the reload.
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)))
    embed: bool = False                      # an --embeddings server (core.api.embed)
    busy: int = 0
    expires: float = float("inf")            # time.time() after which an idle server stops
    last_used: float = field(default_factory=time.time)

    @property
    def alive(self) -> bool:
        proc = self.server.process
        return proc is not None and proc.poll() is None and is_alive(self.server.entry)

    @property
    def expires_at(self) -> str:
        t = min(self.expires, time.time() + 10 * 365 * 86400)
        return datetime.fromtimestamp(t, timezone.utc).isoformat()


class ModelManager:
    def __init__(self, home: Home, *, keep_alive: float, memory_budget: int | None = None) -> None:
        self.home = home
        self.keep_alive = keep_alive
        self.budget = memory_budget or psutil.virtual_memory().total // 2
        self.loaded: dict[str, Loaded] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()  # unloads in flight (a reference keeps them alive)

    def model(self, name: str) -> InstalledModel:
        try:
            return ModelIndex(self.home).get(name)
        except DiskLLMError:
            raise UnknownModel(f"model '{name}' not found") from None

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap())

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._stop(n) for n in list(self.loaded)))

    async def acquire(self, name: str, num_ctx: int | None = None, *,
                      embed: bool = False) -> tuple[Loaded, float]:
        """The running server for `name` (its embedding server with `embed`), marked busy
        until release(), and the seconds this call spent loading it (0 when it was loaded)."""
        model = self.model(name)
        key = _key(model.name, embed)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cur = self.loaded.get(key)
            if cur is not None and (not cur.alive or (num_ctx and num_ctx != cur.ctx)):
                await self._stop(key)  # crashed or killed, or another context size
                cur = None
            spent = 0.0
            if cur is None:
                await self._make_room(model)
                cur = await self._load(model, num_ctx, embed)
                self.loaded[key] = cur
                spent = cur.load_seconds
            cur.busy += 1
            cur.last_used = time.time()
            return cur, spent

    def release(self, loaded: Loaded, keep_alive: float | None = None) -> None:
        """Not async: it runs in the `finally` of a stream whose client went away, where
        an await would be cancelled again. keep_alive 0 unloads in a task of its own."""
        loaded.busy -= 1
        ka = self.keep_alive if keep_alive is None else keep_alive
        loaded.last_used = time.time()
        loaded.expires = loaded.last_used + ka
        if ka <= 0 and loaded.busy == 0:
            task = asyncio.get_running_loop().create_task(self.unload(loaded.model.name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def unload(self, name: str) -> bool:
        """Stop the model's servers (generation and embedding); False if none ran."""
        model = self.model(name).name
        found = False
        for key in (_key(model, False), _key(model, True)):
            if key in self.loaded:
                found = True
                async with self._locks.setdefault(key, asyncio.Lock()):
                    await self._stop(key)
        return found

    async def _load(self, model: InstalledModel, num_ctx: int | None, embed: bool = False) -> Loaded:
        t0 = time.monotonic()
        extra: list[str] = []
        if embed:
            num_ctx = num_ctx or DEFAULT_EMBED_CTX
            extra = embed_server_args(str(model.path), num_ctx)
        try:
            done = await launch(self.home, LaunchRequest(model=model.name, options={"ctx": num_ctx},
                                                         extra_args=extra))
        except DiskLLMError as e:
            raise LoadFailed(f"cannot load {model.name}: {e}") from None
        assert done.server is not None
        return Loaded(model, done.server, done.options.ctx, time.monotonic() - t0, embed=embed)

    async def _make_room(self, model: InstalledModel) -> None:
        """Stop the least recently used idle servers until `model` fits the budget."""
        while self.loaded:
            used = sum(x.model.size for x in self.loaded.values())
            if used + model.size <= self.budget:
                return
            idle = sorted((x for x in self.loaded.values() if x.busy == 0), key=lambda x: x.last_used)
            if not idle:
                return  # everything is in use: load anyway rather than fail the request
            await self._stop(idle[0].model.name)

    async def _stop(self, key: str) -> None:
        cur = self.loaded.pop(key, None)
        if cur is not None:
            await stop_server(cur.server)
            await cur.http.aclose()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for key, cur in list(self.loaded.items()):
                if cur.busy == 0 and (cur.expires <= now or not cur.alive):
                    async with self._locks.setdefault(key, asyncio.Lock()):
                        if self.loaded.get(key) is cur and cur.busy == 0:
                            await self._stop(key)


