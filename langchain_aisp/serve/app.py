"""The FastAPI app: OpenAI-compatible ``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/metrics``.

A thin surface over :class:`~langchain_aisp.serve.service.AlignmentService`: it reads and
bounds the body, checks the bearer token, translates with :mod:`~langchain_aisp.serve.protocol`,
admits the request, waits for its answer while watching for a client disconnect, and
writes JSON or server-sent events. The same app runs under uvicorn (``langchain-aisp serve``)
and as a Ray Serve replica (:mod:`langchain_aisp.serve.ray`).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from langchain_aisp.chat_models import RunCancelledError
from langchain_aisp.engine.aisp import RewardError
from langchain_aisp.serve.config import ServeConfig
from langchain_aisp.serve.metrics import Metrics
from langchain_aisp.serve.protocol import (
    APIError,
    aisp_headers,
    aisp_summary,
    chunk_events,
    completion_body,
    new_completion_id,
    parse_body,
    parse_chat_request,
)
from langchain_aisp.serve.service import AlignmentService, Answer, ClientGoneError, Pending

DISCONNECT_POLL_SECONDS = 0.05
"""How often a waiting request checks whether its client is still connected."""

_PATHS = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class _CountRequests:
    """Pure ASGI middleware counting HTTP requests by path and status (no body buffering: streaming and
    disconnect detection are untouched)."""

    def __init__(self, app: ASGIApp, service: AlignmentService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            path = scope.get("path", "")
            label = path if path in _PATHS or path.startswith("/v1/models/") else "other"
            if label.startswith("/v1/models/"):
                label = "/v1/models/{id}"
            self.service.metrics.inc("aisp_http_requests_total", labels={"path": label, "status": str(status["code"])})


def create_app(config: ServeConfig | None = None, *, service: AlignmentService | None = None) -> FastAPI:
    """The ASGI app. The service (model, rewards, worker) starts in the app's lifespan and, on shutdown,
    finishes every admitted request before the worker stops."""
    if service is None:
        service = AlignmentService(config or ServeConfig())
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(title="langchain-aisp", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(_CountRequests, service=service)  # type: ignore[arg-type]
    metrics = service.metrics

    def count(outcome: str) -> None:
        metrics.inc("aisp_requests_total", labels={"outcome": outcome})

    def authorize(request: Request) -> None:
        key = service.config.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        state = "shutting_down" if service.closing else ("ok" if service.healthy else "engine_stopped")
        body = {
            "status": state,
            "model": service.served_model_name,
            "rewards": service.reward_names,
            "queue_depth": int(metrics.value("aisp_queue_depth")),
        }
        return JSONResponse(body, status_code=200 if state == "ok" else 503)

    @app.get("/metrics")
    async def prometheus(request: Request) -> PlainTextResponse:
        authorize(request)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict[str, Any]:
        return {
            "id": service.served_model_name,
            "object": "model",
            "created": created,
            "owned_by": "langchain-aisp",
            "aisp": {"rewards": service.reward_names, "default_reward": service.config.default_reward},
        }

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse({"object": "list", "data": [model_card()]})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> JSONResponse:
        authorize(request)
        if model_id not in (service.served_model_name, "default"):
            raise APIError(404, f"model {model_id!r} is not served here", param="model", code="model_not_found")
        return JSONResponse(model_card())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            authorize(request)
            with service.admission():
                data = parse_body(await _read_body(request, service.config.max_body_bytes))
                call = parse_chat_request(data)
                pending = await run_in_threadpool(service.prepare, call)
                service.submit(pending)
        except APIError as exc:
            count(
                {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "too_large", 429: "rejected"}.get(
                    exc.status, "unavailable"
                )
            )
            raise
        answer = await _outcome(request, pending, metrics, count)
        if answer is None:
            count("cancelled")
            return Response(status_code=499)  # the client is gone: nobody reads this
        count("ok")
        completion_id = new_completion_id()
        aisp = aisp_summary(
            answer.message,
            reward_name=answer.reward_name,
            queue_ms=round(answer.queue_seconds * 1000, 1),
            run_ms=round(answer.run_seconds * 1000, 1),
        )
        model = service.served_model_name
        headers = aisp_headers(aisp)
        if call.stream:
            events = chunk_events(
                answer.message, completion_id=completion_id, model=model, aisp=aisp, include_usage=call.include_usage
            )
            headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        body = completion_body(answer.message, completion_id=completion_id, model=model, aisp=aisp)
        return JSONResponse(body, headers=headers)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI-style JSON body: ours (APIError), Starlette's, validation, and the unexpected."""

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = APIError(exc.status_code, str(exc.detail), type="invalid_request_error").body()
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
        body = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(400, str(exc)).body(), status_code=400)


async def _outcome(request: Request, pending: Pending, metrics: Metrics, count: Callable[[str], None]) -> Answer | None:
    """The request's answer, None if the client went away or the call was cancelled; engine failures as APIError."""
    try:
        answer = await _wait(request, pending, metrics)
    except RewardError as exc:
        count("reward_error")
        raise _reward_error(pending, exc) from None
    except (ClientGoneError, RunCancelledError):
        answer = None
    except TimeoutError as exc:
        count("timeout")
        raise APIError(
            504,
            f"the request's timeout passed before any answer was scored ({exc}); other requests are unaffected",
            type="timeout_error",
            param="timeout",
            code="timeout",
        ) from None
    except Exception as exc:
        count("error")
        raise APIError(500, f"the engine failed: {type(exc).__name__}: {exc}", type="server_error") from None
    return answer


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = APIError(
        413, f"the request body is larger than this server's limit of {limit} bytes", code="body_too_large"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait(request: Request, pending: Pending, metrics: Metrics) -> Answer | None:
    """The request's answer, or None when the client disconnected first (its run then drops it at the next
    iteration boundary, or skips it if it has not started)."""
    future = asyncio.wrap_future(pending.future)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return future.result()
            if await request.is_disconnected():
                metrics.inc("aisp_disconnects_total")
                pending.cancel.set()
                future.cancel()
                return None
    except asyncio.CancelledError:  # the server (or Ray Serve's proxy) cancelled this handler
        pending.cancel.set()
        raise


def _reward_error(pending: Pending, exc: RewardError) -> APIError:
    partial = exc.partial[0] if exc.partial else None
    extra: dict[str, Any] = {}
    if partial is not None:
        extra["partial"] = {"content": partial.text, "reward": partial.reward, "iterations": len(partial.rewards)}
    cause = exc.__cause__  # the reward's own exception
    why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
    where = getattr(exc, "iteration", None)
    if where is not None:
        response = getattr(exc, "response_index", None)
        why += f"; iteration {where}" + (f", response {response}" if response is not None else "")
    return APIError(
        500,
        f"the reward {pending.reward_name!r} failed on this request's responses ({why}); other requests are "
        "unaffected" + ("; the best answer scored before the failure is in error.partial" if partial else ""),
        type="reward_error",
        code="reward_failed",
        extra=extra,
    )
