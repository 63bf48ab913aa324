"""The serving core: admission, continuous Batched AISP and the engine thread (no HTTP, no Ray).

One :class:`AlignmentService` per server process (or Ray Serve replica) holds the loaded
model, one :class:`~langchain_aisp.AISPChatModel` per registered reward (all sharing that
model), a bounded admission count and one continuous
:class:`~langchain_aisp.engine.scheduler.Scheduler` (one engine thread). Each admitted request
runs ``AISPChatModel.run_prepared`` on a request thread with the scheduler as its engine
``runner``: its prompts join the running Batched AISP run of compatible settings at the next
iteration boundary (each with its own U, seed, deadline and reward) and leave when done. When
nothing runs, a request waits ``batch_window_ms`` for others (longer, up to
``batch_window_max_ms``, while more requests are being read), so a burst starts together.

Per-request isolation comes from the chat model and the scheduler: a reward failing on one
request's responses fails that request only, and a request whose client is gone (``cancel``
set) leaves the batch at the next iteration boundary.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage

from langchain_aisp.chat_models import AISPChatModel, PreparedCall, RunCancelledError
from langchain_aisp.engine.aisp import PromptResult, RewardError
from langchain_aisp.engine.memory import ControlMemory
from langchain_aisp.engine.scheduler import Scheduler, Ticket
from langchain_aisp.serve.config import ServeConfig
from langchain_aisp.serve.metrics import Metrics
from langchain_aisp.serve.protocol import APIError, ChatCall, bad_request

logger = logging.getLogger("langchain_aisp.serve")


class ClientGoneError(RuntimeError):
    """The client disconnected before its request ran; nothing was computed for it."""


@dataclass
class Answer:
    """A served answer and how it was served."""

    message: AIMessage
    reward_name: str
    queue_seconds: float
    run_seconds: float


@dataclass
class Pending:
    """An admitted request: its prepared call, the model of its reward, and where its outcome goes."""

    call: PreparedCall
    model: AISPChatModel
    reward_name: str
    work: int
    """num_samples x num_iterations x max_tokens: the sampled tokens it may cost."""
    arrival: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future[Answer] = field(default_factory=concurrent.futures.Future)
    ticket: Ticket | None = None
    """Its engine call in the scheduler (None until its prompts were submitted)."""


class AlignmentService:
    """Loads the model, validates and admits requests, and runs them by continuous Batched AISP on one engine
    thread (one request thread each waits for its answer)."""

    def __init__(self, config: ServeConfig, *, llm: Any = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self._llm = llm
        self._models: dict[str, AISPChatModel] = {}
        self._admitted = 0
        self._admitting = 0  # requests being read and validated right now (a burst in progress)
        self._work = 0
        self._cond = threading.Condition()
        self._closing = False
        self._scheduler = Scheduler(
            max_prompts=config.max_batch_prompts,
            window_s=config.batch_window_ms / 1000.0,
            window_max_s=config.batch_window_max_ms / 1000.0 if config.batch_window_ms > 0 else 0.0,
            hold=lambda: self._admitting > 0,
            name="aisp-engine",
        )
        self._requests: concurrent.futures.ThreadPoolExecutor | None = None
        self._round_seconds = 1.0  # moving average of a request's engine time (for Retry-After)
        self.served_model_name = config.served_model_name or ""

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Import the rewards, load the model, warm up, start the worker (idempotent).

        Every reward is resolved before the model loads, so a mistyped ``module:callable`` fails
        the start at once; all rewards share one loaded model.
        """
        if self._requests is not None:
            return
        cfg = self.config
        source: dict[str, Any] = (
            {"model": self._llm}
            if self._llm is not None
            else {
                "model": cfg.model,
                "device": cfg.device,
                "dtype": cfg.dtype,
                "trust_remote_code": cfg.trust_remote_code,
            }
        )
        for name, reward in cfg.rewards.items():
            try:
                self._models[name] = AISPChatModel(
                    reward=reward, max_batch_rows=cfg.max_batch_rows, control_memory=self._memory(name), **source,
                    **cfg.defaults,
                )  # fmt: skip
            except ValueError as exc:
                errors = getattr(exc, "errors", None)  # pydantic: keep the messages, drop the boilerplate
                why = "; ".join(str(e.get("msg")) for e in errors()) if callable(errors) else str(exc)
                raise ValueError(f"reward {name!r} ({reward!r}) cannot be served: {why}") from exc
        first = next(iter(self._models.values()))
        first.prepare([HumanMessage("ping")])  # loads the model now (once, shared through the model cache)
        self.served_model_name = cfg.served_model_name or first.model_name
        if cfg.warmup:
            self._warm_up()
        self._scheduler.start()
        self._requests = concurrent.futures.ThreadPoolExecutor(cfg.max_queue, thread_name_prefix="aisp-request")
        logger.info(
            "serving %s with rewards %s (default %s)", self.served_model_name, list(self._models), cfg.default_reward
        )

    def _memory_path(self, name: str) -> Path | None:
        return None if self.config.memory_dir is None else Path(self.config.memory_dir) / f"{name}.safetensors"

    def _memory(self, name: str) -> ControlMemory | None:
        """The control memory of a registered reward: its saved profile when there is one, else a new one."""
        if not self.config.memory:
            return None
        path = self._memory_path(name)
        if path is not None and path.is_file():
            memory = ControlMemory.load(path)
            logger.info("reward %r: control memory loaded from %s (%d calls learned)", name, path, memory.updates)
            return memory
        return ControlMemory()

    def save_memories(self) -> list[Path]:
        """Write the profile of every memory that learned something to ``memory_dir`` (none without it)."""
        written = []
        for name, model in self._models.items():
            path, memory = self._memory_path(name), model.control_memory
            if path is not None and memory is not None and memory.updates:
                path.parent.mkdir(parents=True, exist_ok=True)
                written.append(memory.save(path))
        return written

    def _warm_up(self) -> None:
        for name, model in self._models.items():
            call = model.prepare([HumanMessage("ping")], method="bon", num_samples=1, num_iterations=1, max_tokens=1)
            (outcome,) = model.run_prepared([call])
            if isinstance(outcome, BaseException):
                raise RuntimeError(f"reward {name!r} failed its warm-up call: {outcome}") from outcome

    def close(self, timeout: float | None = None) -> None:
        """Stop admitting (503), finish every admitted request, stop the engine thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._requests is not None:
            self._requests.shutdown(wait=True)
        self._scheduler.close(timeout)
        for path in self.save_memories():
            logger.info("control memory saved to %s", path)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def healthy(self) -> bool:
        """The engine thread is running (False before start, after close, or if it died)."""
        return self._requests is not None and self._scheduler.alive

    @property
    def reward_names(self) -> list[str]:
        return list(self.config.rewards)

    # --- admission -------------------------------------------------------------------------------

    def prepare(self, call: ChatCall) -> Pending:
        """Resolve the reward, translate and validate the call; raises :class:`APIError` (400/404)."""
        if call.model not in (self.served_model_name, "default"):
            raise APIError(
                404,
                f"model {call.model!r} is not served here; use {self.served_model_name!r} or 'default'",
                param="model",
                code="model_not_found",
            )
        name = call.reward or self.config.default_reward
        model = self._models.get(name)
        if model is None:
            raise bad_request(
                f"unknown reward {name!r}; known rewards: {self.reward_names} (default {self.config.default_reward!r})",
                param="aisp.reward",
                code="unknown_reward",
            )
        requested = call.kwargs.get("max_tokens")
        if requested is not None and requested > self.config.max_tokens_limit:
            raise self._cap_error("max_tokens", requested, self.config.max_tokens_limit)
        timeout = call.kwargs.get("timeout")
        if timeout is not None and timeout > self.config.max_timeout_s:
            raise bad_request(
                f"timeout is {timeout:g} s, above this server's per-request limit of {self.config.max_timeout_s:g} s",
                param="timeout",
                code="limit_exceeded",
            )
        kwargs = dict(call.kwargs)
        try:
            if call.tools:
                binding = model.bind_tools(
                    call.tools, tool_choice=call.tool_choice, parallel_tool_calls=call.parallel_tool_calls
                )
                kwargs.update(getattr(binding, "kwargs", {}))
            prepared = model.prepare(call.messages, stop=call.stop, **kwargs)
        except (ValueError, TypeError) as exc:
            raise bad_request(str(exc)) from None
        budget = prepared.params.budget
        max_tokens = prepared.sampling.max_tokens
        if budget > self.config.max_budget:
            raise self._cap_error("num_samples x num_iterations", budget, self.config.max_budget)
        if max_tokens > self.config.max_tokens_limit:
            raise self._cap_error("max_tokens", max_tokens, self.config.max_tokens_limit)
        work = budget * max_tokens
        if work > self.config.max_pending_work:
            raise self._cap_error("num_samples x num_iterations x max_tokens", work, self.config.max_pending_work)
        return Pending(prepared, model, name, work)

    @staticmethod
    def _cap_error(what: str, value: int, cap: int) -> APIError:
        return bad_request(f"{what} is {value}, above this server's per-request limit of {cap}", code="limit_exceeded")

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Mark a request as on its way (body being read, validated) so a batch about to start waits for it
        (up to ``batch_window_max_ms``); wrap everything from the first byte to :meth:`submit`."""
        self._arriving(+1)
        try:
            yield
        finally:
            self._arriving(-1)

    def _arriving(self, change: int) -> None:
        with self._cond:
            self._admitting += change
        if change < 0:
            self._scheduler.wake()

    def submit(self, pending: Pending) -> None:
        """Queue an admitted request; raises :class:`APIError` 429 (with Retry-After) when full, 503 when closing."""
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if not self.healthy:
                raise APIError(503, "the engine worker has stopped; restart the server", type="server_error")
            full = self._admitted >= self.config.max_queue
            if full or self._work + pending.work > self.config.max_pending_work:
                retry = self.retry_after()
                raise APIError(
                    429,
                    f"the server is busy: {self._admitted} requests and {self._work} sampled tokens of work are "
                    f"admitted (limits: {self.config.max_queue} requests, {self.config.max_pending_work} tokens); "
                    f"retry after {retry} s",
                    type="rate_limit_error",
                    code="queue_full",
                    headers={"Retry-After": str(retry)},
                )
            pending.arrival = time.monotonic()
            self._admitted += 1
            self._work += pending.work
            self._scheduler.expect()  # until its prompts reach the scheduler (see _serve)
            self._gauges()
            if self._requests is not None:  # healthy, so started
                self._requests.submit(self._serve, pending)

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the rounds ahead of it times a round's average duration."""
        rounds = 1 + self._admitted / self.config.max_batch_prompts
        return max(1, min(600, math.ceil(self._round_seconds * rounds)))

    def _gauges(self) -> None:
        self.metrics.set("aisp_queue_depth", self._admitted)
        self.metrics.set("aisp_pending_work_tokens", self._work)

    def run(self, call: ChatCall, timeout: float | None = None) -> Answer:
        """Prepare, submit and wait (a blocking convenience for Python callers and tests)."""
        pending = self.prepare(call)
        self.submit(pending)
        return pending.future.result(timeout)

    # --- a request's thread ---------------------------------------------------------------------------

    def _serve(self, pending: Pending) -> None:
        """Run one request through the scheduler and deliver its outcome (never leaves it waiting)."""
        handed = False

        def runner(*args: Any, **kwargs: Any) -> list[PromptResult]:
            nonlocal handed
            try:
                pending.ticket = self._scheduler.submit(*args, **kwargs)
            finally:
                if not handed:
                    handed = True
                    self._scheduler.arrived()
            return pending.ticket.result()

        try:
            if pending.cancel.is_set():
                self.metrics.inc("aisp_cancelled_total")
                outcome: Any = ClientGoneError("the client disconnected before its request ran")
            else:
                keep = lambda _i: not pending.cancel.is_set()  # noqa: E731
                (outcome,) = pending.model.run_prepared([pending.call], keep=keep, runner=runner)
        except BaseException as exc:  # never leave a request waiting forever
            logger.exception("serving a request failed")
            outcome = exc
        finally:
            if not handed:
                self._scheduler.arrived()
        self._finish(pending, outcome)

    def _timing(self, pending: Pending) -> tuple[float, float, int]:
        """Its queue wait, engine time and the most prompts that shared its decode batches."""
        ticket = pending.ticket
        if ticket is None or ticket.admitted is None:
            return max(0.0, time.monotonic() - pending.arrival), 0.0, 0
        queued = ticket.admitted - pending.arrival
        elapsed = (ticket.finished or time.monotonic()) - ticket.admitted
        self.metrics.observe("aisp_queue_wait_seconds", queued)
        self.metrics.observe("aisp_engine_run_seconds", elapsed)
        self.metrics.observe("aisp_batch_prompts", ticket.batch_prompts)
        self._round_seconds = 0.7 * self._round_seconds + 0.3 * elapsed
        return queued, elapsed, ticket.batch_prompts

    def _finish(self, pending: Pending, outcome: Any) -> None:
        queued, elapsed, shared = self._timing(pending)
        with self._cond:
            self._admitted -= 1
            self._work -= pending.work
            self._gauges()
        partial: PromptResult | None = None
        if isinstance(outcome, AIMessage):
            meta = outcome.response_metadata.get("aisp", {})
            self.metrics.inc("aisp_samples_generated_total", meta.get("samples") or 0)
            self.metrics.inc("aisp_tokens_generated_total", meta.get("generated_tokens") or 0)
            if meta.get("timed_out"):
                self.metrics.inc("aisp_timed_out_total")
            if shared:
                meta["batch_prompts"] = shared  # engine prompts in its decode batch, not calls of run_prepared
            _settle(pending.future, Answer(outcome, pending.reward_name, queued, elapsed))
            return
        if isinstance(outcome, RewardError):
            self.metrics.inc("aisp_reward_failures_total", labels={"reward": pending.reward_name})
            partial = outcome.partial[0] if outcome.partial else None
        elif isinstance(outcome, RunCancelledError):
            self.metrics.inc("aisp_cancelled_total")
            partial = outcome.partial[0] if outcome.partial else None
        elif isinstance(outcome, TimeoutError):
            self.metrics.inc("aisp_timed_out_total")
        if partial is not None:
            self.metrics.inc("aisp_samples_generated_total", partial.samples)
            self.metrics.inc("aisp_tokens_generated_total", partial.generated_tokens)
        error = outcome if isinstance(outcome, BaseException) else RuntimeError(f"unexpected outcome {outcome!r}")
        _settle(pending.future, error=error)


def _settle(future: concurrent.futures.Future[Answer], result: Answer | None = None, error: Any = None) -> None:
    """Deliver an outcome unless the waiting side already gave up (cancelled the future)."""
    try:
        if error is not None:
            future.set_exception(error)
        elif result is not None:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass
