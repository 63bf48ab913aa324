"""``aisp_progress`` events on every LangChain path, per iteration, before the answer (tiny random Llama)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler

import langchain_aisp.chat_models as cm
from langchain_aisp import AISPChatModel
from langchain_aisp.chat._progress import CURRENT_RUN

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ITERATIONS = 3


class Log:
    """One ordered record of what happened: reward calls, progress events, chunks seen by the caller."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Any]] = []

    def reward(self, prompt: str, response: str) -> float:
        self.entries.append(("score", None))
        return float(len(response))

    def kinds(self) -> list[str]:
        # consecutive reward calls of one iteration collapse to one "score"
        out: list[str] = []
        for kind, _ in self.entries:
            if not (kind == "score" and out and out[-1] == "score"):
                out.append(kind)
        return out


class SyncHandler(BaseCallbackHandler):
    def __init__(self, log: Log) -> None:
        self.log = log
        self.run_ids: set[UUID] = set()
        self.starts: list[UUID] = []

    def on_chat_model_start(self, *args: Any, run_id: UUID, **kwargs: Any) -> None:
        self.starts.append(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        assert name == cm.PROGRESS_EVENT
        self.run_ids.add(run_id)
        self.log.entries.append(("event", data["iteration"]))


class AsyncHandler(AsyncCallbackHandler):
    def __init__(self, log: Log) -> None:
        self.log = log
        self.run_ids: set[UUID] = set()
        self.starts: list[UUID] = []

    async def on_chat_model_start(self, *args: Any, run_id: UUID, **kwargs: Any) -> None:
        self.starts.append(run_id)

    async def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        assert name == cm.PROGRESS_EVENT
        self.run_ids.add(run_id)
        self.log.entries.append(("event", data["iteration"]))


def make(tiny_lm, log: Log, **kw: Any) -> AISPChatModel:
    return AISPChatModel(
        method="aisp",
        reward=log.reward,
        model=tiny_lm,
        num_samples=2,
        num_iterations=ITERATIONS,
        max_tokens=6,
        seed=0,
        **kw,
    )


def check(log: Log, handler: SyncHandler | AsyncHandler) -> None:
    """One event per iteration, in order, all before the first chunk. A sync handler gets each right after that
    iteration's scoring; an async one after it too, but maybe later (its loop does not hold up the engine)."""
    kinds = log.kinds()
    first_chunk = kinds.index("chunk") if "chunk" in kinds else len(kinds)
    if isinstance(handler, SyncHandler):
        assert kinds[:first_chunk] == ["score", "event"] * ITERATIONS, kinds
    else:
        scored = [kinds[:i].count("score") for i, kind in enumerate(kinds[:first_chunk]) if kind == "event"]
        assert len(scored) == ITERATIONS and all(n >= i + 1 for i, n in enumerate(scored)), kinds
    assert [v for k, v in log.entries if k == "event"] == list(range(ITERATIONS))
    assert handler.run_ids == set(handler.starts) and len(handler.starts) == 1  # the chat model's own run


def test_invoke(tiny_lm):
    log = Log()
    handler = SyncHandler(log)
    make(tiny_lm, log).invoke("Name a fruit.", config={"callbacks": [handler]})
    check(log, handler)


async def test_ainvoke(tiny_lm):
    log = Log()
    handler = AsyncHandler(log)
    await make(tiny_lm, log).ainvoke("Name a fruit.", config={"callbacks": [handler]})
    check(log, handler)


def test_stream(tiny_lm):
    log = Log()
    handler = SyncHandler(log)
    for chunk in make(tiny_lm, log).stream("Name a fruit.", config={"callbacks": [handler]}):
        log.entries.append(("chunk", chunk.content))
    check(log, handler)
    assert "chunk" in log.kinds()


async def test_astream(tiny_lm):
    log = Log()
    handler = AsyncHandler(log)
    async for chunk in make(tiny_lm, log).astream("Name a fruit.", config={"callbacks": [handler]}):
        log.entries.append(("chunk", chunk.content))
    check(log, handler)
    assert "chunk" in log.kinds()


def test_streaming_true_invoke(tiny_lm):
    log = Log()
    handler = SyncHandler(log)
    tokens: list[str] = []

    class Tokens(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            tokens.append(token)
            log.entries.append(("chunk", token))

    msg = make(tiny_lm, log, streaming=True).invoke("Name a fruit.", config={"callbacks": [handler, Tokens()]})
    check(log, handler)
    assert "".join(tokens) == msg.content  # it really went through _stream


async def test_astream_events_v2(tiny_lm):
    log = Log()
    events = []
    async for event in make(tiny_lm, log).astream_events("Name a fruit.", version="v2"):
        events.append(event)
        if event["event"] == "on_custom_event":
            log.entries.append(("event", event["data"]["iteration"]))
        elif event["event"] == "on_chat_model_stream":
            log.entries.append(("chunk", event["data"]["chunk"].content))
    kinds = log.kinds()
    assert kinds[: kinds.index("chunk")].count("event") == ITERATIONS, kinds  # every event before the first chunk
    assert [v for k, v in log.entries if k == "event"] == list(range(ITERATIONS))
    progress = [e for e in events if e["event"] == "on_custom_event"]
    assert {e["name"] for e in progress} == {cm.PROGRESS_EVENT}
    start = next(e for e in events if e["event"] == "on_chat_model_start")
    assert {e["run_id"] for e in progress} == {start["run_id"]}  # attributed to the chat model run


async def test_astream_events_in_a_chain(tiny_lm):
    from langchain_core.output_parsers import StrOutputParser

    log = Log()
    chain = make(tiny_lm, log) | StrOutputParser()
    names = [e["name"] async for e in chain.astream_events("Name a fruit.", version="v2")]
    assert names.count(cm.PROGRESS_EVENT) == ITERATIONS


def test_caller_run_id_is_kept_and_nothing_leaks(tiny_lm):
    from uuid import uuid4

    log = Log()
    handler = SyncHandler(log)
    run_id = uuid4()
    stream = make(tiny_lm, log).stream("Name a fruit.", config={"callbacks": [handler], "run_id": run_id})
    next(stream)  # the caller holds a chunk: no run is current in its context
    assert CURRENT_RUN.get() is None
    stream.close()
    assert handler.starts == [run_id] and handler.run_ids == {run_id}
    # a top-level stream without callbacks gives invoke's answer and sends no event to the earlier run's handler
    seen = len(log.entries)
    quiet_log = Log()
    quiet = make(tiny_lm, quiet_log)
    streamed = "".join(c.content for c in quiet.stream("Hi"))
    assert streamed == quiet.invoke("Hi").content != ""
    assert len(log.entries) == seen and [k for k, _ in quiet_log.entries if k != "score"] == []
