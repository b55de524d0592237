"""The daemon's HTTP routes: Ollama's /api/*, OpenAI's /v1/*, errors as {"error": "..."}."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from diskllm.core.api.embed import embed, embed_inputs
from diskllm.core.api.manager import Loaded, ModelManager, UnknownModel
from diskllm.core.api.pulling import pull_progress
from diskllm.core.api.settings import ApiSettings, parse_keep_alive
from diskllm.core.api.translate import (BadRequest, Timer, chat_messages, generate_messages, now_iso, num_ctx,
                                        sampling, show_entry, tag_entry)
from diskllm.core.chat import ChatDelta, ChatDone, stream_chat
from diskllm.core.errors import DiskLLMError
from diskllm.core.models.index import ModelIndex
from diskllm.core.models.resolve import remove_model
from diskllm.core.paths import Home

VERSION = "0.9.0"  # the Ollama API version we follow; some clients refuse very old ones
HEALTH = ("/",)    # the only route without the key: load balancers and `curl` checks
NDJSON = "application/x-ndjson"


class BearerAuth:
    """Every route but HEALTH needs `Authorization: Bearer <key>` (when a key is set)."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key and scope["type"] == "http" and scope["path"] not in HEALTH:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.key.encode()):
                resp = JSONResponse({"error": "unauthorized: send the key as 'Authorization: Bearer <key>'"},
                                    401, headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


async def _on_error(request: Request, exc: Exception) -> JSONResponse:  # noqa: ARG001
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, str(exc.detail))
    status = 400 if isinstance(exc, BadRequest) else 404 if isinstance(exc, UnknownModel) else 500
    return _error(status, str(exc))


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as e:
        raise BadRequest(f"invalid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _model_name(body: dict[str, Any]) -> str:
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required")
    return name


def _ndjson(lines: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def encode() -> AsyncIterator[bytes]:
        async for line in lines:
            yield json.dumps(line).encode() + b"\n"
    return StreamingResponse(encode(), media_type=NDJSON)


class Api:
    """The route handlers; the state is the model manager."""

    def __init__(self, home: Home, settings: ApiSettings) -> None:
        self.home = home
        self.settings = settings
        self.models = ModelManager(home, keep_alive=settings.keep_alive, memory_budget=settings.memory_budget)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:  # noqa: ARG002
        await self.models.start()
        try:
            yield
        finally:
            await self.models.close()  # every llama-server goes with the daemon

    def routes(self) -> list[Route]:
        return [
            Route("/", self.health, methods=["GET", "HEAD"]),
            Route("/api/version", self.version, methods=["GET"]),
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/delete", self.delete, methods=["DELETE", "POST"]),
            Route("/api/pull", self.pull, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/embeddings", self.embed, methods=["POST"]),
            Route("/v1/models", self.openai_models, methods=["GET"]),
            Route("/v1/chat/completions", self.openai_proxy, methods=["POST"]),
            Route("/v1/completions", self.openai_proxy, methods=["POST"]),
            Route("/v1/embeddings", self.openai_proxy, methods=["POST"]),
        ]

    # --- models --------------------------------------------------------------
    async def health(self, request: Request) -> Response:  # noqa: ARG002
        return PlainTextResponse("Ollama is running (DiskLLM)")

    async def version(self, request: Request) -> Response:  # noqa: ARG002
        return JSONResponse({"version": VERSION})

    async def tags(self, request: Request) -> Response:  # noqa: ARG002
        return JSONResponse({"models": [tag_entry(m) for m in ModelIndex(self.home).all()]})

    async def ps(self, request: Request) -> Response:  # noqa: ARG002
        rows, seen = [], set()
        # a model with a generation and an embedding server is one row, as in Ollama
        for x in sorted(self.models.loaded.values(), key=lambda x: x.embed):
            if x.alive and x.model.name not in seen:
                seen.add(x.model.name)
                e = tag_entry(x.model)
                rows.append({**e, "expires_at": x.expires_at, "size_vram": 0, "context_length": x.ctx})
        return JSONResponse({"models": rows})

    async def show(self, request: Request) -> Response:
        return JSONResponse(show_entry(self.models.model(_model_name(await _json(request)))))

    async def delete(self, request: Request) -> Response:
        m = self.models.model(_model_name(await _json(request)))
        await self.models.unload(m.name)
        remove_model(self.home, m.name)
        return JSONResponse({})

    async def pull(self, request: Request) -> Response:
        body = await _json(request)
        lines = pull_progress(self.home, _model_name(body))
        if body.get("stream", True):
            return _ndjson(lines)
        last: dict[str, Any] = {}
        async for last in lines:
            pass
        return _error(500, last["error"]) if "error" in last else JSONResponse({"status": "success"})

    async def embed(self, request: Request) -> Response:
        """/api/embed (normalized vectors, Ollama's default) and the older /api/embeddings
        (one raw vector), on the model's embedding server."""
        legacy = request.url.path == "/api/embeddings"
        body = await _json(request)
        name = _model_name(body)
        texts = embed_inputs(body, legacy)
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise BadRequest("truncate must be true or false")
        keep = parse_keep_alive(body.get("keep_alive"), self.settings.keep_alive)
        timer = Timer()
        loaded, timer.load_seconds = await self.models.acquire(name, num_ctx(body), embed=True)
        try:
            out = await embed(loaded.http, loaded.server.base_url, texts, ctx=loaded.ctx, truncate=truncate,
                              normalize=not legacy)
        finally:
            self.models.release(loaded, keep)
        if legacy:
            return JSONResponse({"embedding": out.vectors[0]})
        return JSONResponse({"model": name, "embeddings": out.vectors,
                             "total_duration": int((time.monotonic() - timer.t0) * 1e9),
                             "load_duration": int(timer.load_seconds * 1e9),
                             "prompt_eval_count": out.prompt_tokens})

    # --- generation ------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        body = await _json(request)
        return await self._generation(body, chat_messages(body), "chat", empty=not body.get("messages"))

    async def generate(self, request: Request) -> Response:
        body = await _json(request)
        return await self._generation(body, generate_messages(body), "generate", empty=not body.get("prompt"))

    async def _generation(self, body: dict[str, Any], messages: list[dict[str, str]], kind: str,
                          *, empty: bool) -> Response:
        name = _model_name(body)
        params = sampling(body)
        keep = parse_keep_alive(body.get("keep_alive"), self.settings.keep_alive)
        timer = Timer()

        def reply(text: str, extra: dict[str, Any]) -> dict[str, Any]:
            head: dict[str, Any] = {"model": name, "created_at": now_iso()}
            if kind == "chat":
                head["message"] = {"role": "assistant", "content": text}
            else:
                head["response"] = text
            return {**head, "done": False, **extra}

        if empty:  # Ollama's load / unload requests
            if keep <= 0:
                self.models.model(name)
                await self.models.unload(name)
                return JSONResponse(reply("", {"done": True, "done_reason": "unload"}))
            loaded, spent = await self.models.acquire(name, num_ctx(body))
            self.models.release(loaded, keep)
            return JSONResponse(reply("", {"done": True, "done_reason": "load",
                                           "load_duration": int(spent * 1e9)}))
        loaded, timer.load_seconds = await self.models.acquire(name, num_ctx(body))
        events = self._events(loaded, messages, params, keep)
        if not body.get("stream", True):
            text: list[str] = []
            done: ChatDone | None = None
            async for ev in events:
                if isinstance(ev, ChatDelta):
                    text.append(ev.text)
                else:
                    done = ev
            return JSONResponse(reply("".join(text), timer.final(done)))

        async def lines() -> AsyncIterator[dict[str, Any]]:
            async for ev in events:
                if isinstance(ev, ChatDelta):
                    yield reply(ev.text, {})
                else:
                    yield reply("", timer.final(ev))
        return _ndjson(lines())

    async def _events(self, loaded: Loaded, messages: list[dict[str, str]], params: dict[str, Any],
                      keep: float) -> AsyncIterator[ChatDelta | ChatDone]:
        """The llama-server's stream; leaving early (client gone) closes it, which stops generation."""
        try:
            async for ev in stream_chat(loaded.server.base_url, messages, client=loaded.http, **params):
                yield ev
        finally:
            self.models.release(loaded, keep)

    # --- OpenAI ----------------------------------------------------------------
    async def openai_models(self, request: Request) -> Response:  # noqa: ARG002
        data = [{"id": m.name, "object": "model", "created": 0, "owned_by": "diskllm"}
                for m in ModelIndex(self.home).all()]
        return JSONResponse({"object": "list", "data": data})

    async def openai_proxy(self, request: Request) -> Response:
        """Routed by `model` to that model's llama-server, streamed through as it comes."""
        body = await _json(request)
        embeddings = request.url.path == "/v1/embeddings"
        loaded, _ = await self.models.acquire(_model_name(body), None, embed=embeddings)
        try:
            req = loaded.http.build_request("POST", loaded.server.base_url + request.url.path, json=body)
            resp = await loaded.http.send(req, stream=True)
        except httpx.HTTPError as e:
            self.models.release(loaded)
            raise DiskLLMError(f"lost the llama-server of {loaded.model.name}: {e}") from None

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                self.models.release(loaded)
                asyncio.get_running_loop().create_task(resp.aclose())
        return StreamingResponse(relay(), status_code=resp.status_code,
                                 media_type=resp.headers.get("content-type", "application/json"))


def create_app(home: Home, settings: ApiSettings) -> ASGIApp:
    api = Api(home, settings)
    handlers = {HTTPException: _on_error, DiskLLMError: _on_error}
    app = Starlette(routes=api.routes(), lifespan=api.lifespan, exception_handlers=handlers)
    app.state.api = api
    return BearerAuth(app, settings.api_key)
