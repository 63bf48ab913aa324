"""Progress callbacks: the ``"aisp_progress"`` custom event after every iteration, sent to the right run.

``CURRENT_RUN`` is a context variable (not shared state): langchain-core calls ``_stream`` without a
run manager (``stream``, ``astream``, ``streaming=True``, ``astream_events``), so the public entry
points fix the run id up front and make the run known here while LangChain's code runs for them.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.callbacks.manager import ahandle_event, handle_event
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config

PROGRESS_EVENT = "aisp_progress"
"""Name of the custom callback event sent after every AISP/BoN iteration."""

ProgressFn = Callable[[dict[str, Any]], None]
"""Receives one progress event's data (``iteration``, ``num_iterations``, ``rewards``, ``best_reward``, ``method``)."""

T = TypeVar("T")


@dataclass(frozen=True)
class RunRef:
    """The LangChain run of the current public call: its id (fixed up front) and config."""

    run_id: uuid.UUID
    config: RunnableConfig


CURRENT_RUN: ContextVar[RunRef | None] = ContextVar("langchain_aisp_current_run", default=None)
"""Set by ``invoke``/``ainvoke``/``stream``/``astream`` only while LangChain's code runs for them."""


def _new_run_id() -> uuid.UUID:
    try:
        from langchain_core.utils.uuid import uuid7  # the run ids LangChain itself makes (time-ordered)
    except ImportError:  # langchain-core < 1.x
        return uuid.uuid4()
    return uuid7()


def with_run_id(config: RunnableConfig | None) -> tuple[RunnableConfig, RunRef]:
    """A copy of ``config`` with ``run_id`` set (the caller's, else a fresh one): that id is the chat model run's."""
    config = ensure_config(config)
    run_id = config.get("run_id") or _new_run_id()
    config["run_id"] = run_id
    return config, RunRef(run_id, dict(config))  # type: ignore[arg-type]


def iterate_as_run(ref: RunRef, inner: Iterator[T]) -> Iterator[T]:
    """``inner``'s items; ``ref`` is the current run only while ``inner`` advances (never while the caller
    holds an item)."""
    try:
        while True:
            token = CURRENT_RUN.set(ref)
            try:
                item = next(inner)
            except StopIteration:
                return
            finally:
                CURRENT_RUN.reset(token)
            yield item
    finally:
        inner.close()  # type: ignore[attr-defined]  # a generator


async def aiterate_as_run(ref: RunRef, inner: AsyncIterator[T]) -> AsyncIterator[T]:
    """Async :func:`iterate_as_run`."""
    try:
        while True:
            token = CURRENT_RUN.set(ref)
            try:
                item = await inner.__anext__()
            except StopAsyncIteration:
                return
            finally:
                CURRENT_RUN.reset(token)
            yield item
    finally:
        await inner.aclose()  # type: ignore[attr-defined]  # an async generator


def _run_callbacks(model: BaseChatModel, ref: RunRef, manager_type: type[Any]) -> Any:
    """The callback manager of the run ``ref`` (the handlers LangChain gives the chat model run)."""
    config = ref.config
    return manager_type.configure(
        config.get("callbacks"),
        model.callbacks,
        model.verbose,
        config.get("tags"),
        model.tags,
        config.get("metadata"),
        model.metadata,
    )


def _event_args(run_manager: Any, data: dict[str, Any]) -> tuple[Any, ...]:
    """``handle_event`` / ``ahandle_event`` arguments of one progress event to ``run_manager``'s handlers."""
    return (run_manager.handlers, "on_custom_event", "ignore_custom_event", PROGRESS_EVENT, data)


def _event_kwargs(run_manager: Any) -> dict[str, Any]:
    return {"run_id": run_manager.run_id, "tags": run_manager.tags, "metadata": run_manager.metadata}


def sync_progress(model: BaseChatModel, run_manager: CallbackManagerForLLMRun | None) -> ProgressFn | None:
    """The progress sink of a sync call: its run manager, else the current run's handlers, else None."""
    if run_manager is None:
        ref = CURRENT_RUN.get()
        if ref is None:
            return None
        manager = _run_callbacks(model, ref, CallbackManager)
        return lambda data: manager.on_custom_event(PROGRESS_EVENT, data, run_id=ref.run_id)

    def emit(data: dict[str, Any]) -> None:
        handle_event(*_event_args(run_manager, data), **_event_kwargs(run_manager))

    return emit


def async_progress(
    model: BaseChatModel, run_manager: AsyncCallbackManagerForLLMRun | None, cancel: threading.Event | None = None
) -> ProgressFn | None:
    """The progress sink of an async call, called from the engine's executor thread (runs on the caller's loop)."""
    ref = CURRENT_RUN.get()
    if run_manager is None and ref is None:
        return None
    loop = asyncio.get_running_loop()
    manager = None if run_manager is not None or ref is None else _run_callbacks(model, ref, AsyncCallbackManager)

    def emit(data: dict[str, Any]) -> None:
        if cancel is not None and cancel.is_set():
            return  # the awaiting task is gone (its loop may be closing): nobody listens any more
        if run_manager is not None:
            coro = ahandle_event(*_event_args(run_manager, data), **_event_kwargs(run_manager))
        else:
            assert manager is not None and ref is not None
            coro = manager.on_custom_event(PROGRESS_EVENT, data, run_id=ref.run_id)
        asyncio.run_coroutine_threadsafe(coro, loop).result()

    return emit
