"""Continuous Batched AISP: prompts join a running run at its next iteration boundary and leave when done.

One :class:`Scheduler` owns one engine thread. :meth:`Scheduler.submit` validates a call (the arguments of
:func:`~langchain_aisp.engine.aisp.run`) in the caller's thread and returns a :class:`Ticket` (a future of
its ``list[PromptResult]``). Calls with compatible settings (the same model object, ``AISPParams``,
``SamplingParams``, ``decoding`` and ``max_batch_size``) share one :class:`~langchain_aisp.engine.loop.DecodeGroup`:
at every iteration boundary its waiting prompts join the decode batch (up to ``max_batch_size // n`` prompts,
and ``max_prompts``), each with its own controller (U, seed, iteration counter, deadline, grammar) and its
call's own reward, ``keep`` and progress callback; a prompt leaves the batch when its iterations are done.
Groups of other settings take turns, one iteration each. A prompt's answer does not depend on who else
is in its batch: it is the answer of a solo ``run`` with the same seed (up to batched floating-point
arithmetic, as for Batched AISP). A failure is its call's alone (a decode failure: every call in that batch).

When nothing is running, the first call waits ``window_s`` for others to start with it (a burst shares its
first iteration); while ``hold()`` is true (more calls on their way), up to ``window_max_s``; and as long as
calls announced with :meth:`Scheduler.expect` have not arrived (a caller's hand-off between threads).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from langchain_aisp.engine.config import DEFAULT_DECODING, DEFAULT_MAX_BATCH_SIZE, AISPParams, SamplingParams
from langchain_aisp.engine.controller import PromptResult
from langchain_aisp.engine.decode.select import DecodeFn, select_decode
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.engine.loop import DecodeGroup, Request, check_max_batch_size
from langchain_aisp.engine.scoring import ScoreFn

logger = logging.getLogger("langchain_aisp.engine")


class Ticket(concurrent.futures.Future[list[PromptResult]]):
    """The future of one submitted call (``result()`` is its ``list[PromptResult]`` or raises its error), with
    when it was submitted, when its first prompt joined a decode batch and when it finished (``time.monotonic()``)."""

    def __init__(self, request: Request) -> None:
        super().__init__()
        self.request = request
        self.submitted = time.monotonic()
        self.finished: float | None = None

    @property
    def admitted(self) -> float | None:
        return self.request.admitted

    @property
    def batch_prompts(self) -> int:
        """The most prompts that shared a decode batch with this call's prompts."""
        return max((r.batch_prompts for r in self.request.results if r is not None), default=0)


class Scheduler:
    """Continuous Batched AISP on one engine thread (see the module docstring)."""

    def __init__(
        self,
        *,
        max_prompts: int | None = None,
        window_s: float = 0.0,
        window_max_s: float = 0.0,
        hold: Callable[[], bool] | None = None,
        name: str = "aisp-scheduler",
    ) -> None:
        if max_prompts is not None and (isinstance(max_prompts, bool) or not isinstance(max_prompts, int)):
            raise ValueError(f"max_prompts must be an integer >= 1 or None, got {max_prompts!r}")
        if max_prompts is not None and max_prompts < 1:
            raise ValueError(f"max_prompts must be an integer >= 1 or None, got {max_prompts!r}")
        if window_s < 0 or window_max_s < 0:
            raise ValueError(f"window_s and window_max_s must be >= 0 seconds, got {window_s!r}, {window_max_s!r}")
        self.max_prompts = max_prompts
        self.window_s = window_s
        self.window_max_s = max(window_s, window_max_s)
        self._hold = hold
        self._name = name
        self._cond = threading.Condition()
        self._incoming: list[tuple[tuple[Any, ...], DecodeGroup, Ticket]] = []
        self._groups: dict[tuple[Any, ...], DecodeGroup] = {}  # touched by the engine thread only
        self._tickets: dict[int, Ticket] = {}  # id(request) -> its ticket (engine thread only)
        self._closing = False
        self._expected = 0  # calls announced by expect() and not yet arrived
        self._thread: threading.Thread | None = None

    # --- the caller's side --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread (idempotent; :meth:`submit` starts it too)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(
        self,
        lm: CausalLM,
        prompts: Sequence[Sequence[int]],
        score: ScoreFn,
        params: AISPParams,
        sampling: SamplingParams,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        decoding: str = DEFAULT_DECODING,
        decode_fn: DecodeFn | None = None,
        **kwargs: Any,
    ) -> Ticket:
        """Queue one call (``run``'s arguments; ``kwargs``: seed, on_iteration, on_reward_error, keep, initial_U,
        constraints, deadline, row_shift, row_temperature); validated here, so bad input raises in the caller's
        thread."""
        check_max_batch_size(max_batch_size)
        fn, path = (decode_fn, "custom") if decode_fn is not None else select_decode(lm, decoding)
        tempered = kwargs.get("row_temperature") is not None  # rows with their own temperature decode apart
        key = (id(lm), params, sampling, max_batch_size, path, id(decode_fn), tempered)
        group = DecodeGroup(
            lm, params, sampling, max_batch_size=max_batch_size, decode_fn=fn, max_prompts=self.max_prompts,
            row_temperature=tempered,
        )  # fmt: skip
        ticket = Ticket(group.request(prompts, score, **kwargs))
        with self._cond:
            if self._closing:
                raise RuntimeError("the scheduler is closed")
            self._incoming.append((key, group, ticket))
            self._cond.notify_all()
        self.start()
        return ticket

    def run(self, *args: Any, **kwargs: Any) -> list[PromptResult]:
        """:func:`~langchain_aisp.engine.aisp.run`'s signature, through the scheduler (a ``runner`` for
        :func:`~langchain_aisp.engine.memory.run_with_memory`): submit and wait."""
        return self.submit(*args, **kwargs).result()

    def expect(self) -> None:
        """Announce a call that is on its way: an idle scheduler waits for it before it starts (pair each with
        :meth:`arrived`, after its :meth:`submit` or when it will not come)."""
        with self._cond:
            self._expected += 1

    def arrived(self) -> None:
        with self._cond:
            self._expected -= 1
            self._cond.notify_all()

    def wake(self) -> None:
        """Re-check the window now (call it when ``hold()`` turns false)."""
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float | None = None) -> None:
        """Finish every submitted call, then stop the engine thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the engine thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while self._take_incoming():
            for key, group in list(self._groups.items()):  # groups take turns, one iteration each
                try:
                    group.admit()  # waiting prompts join at this iteration boundary
                    group.iterate()  # sample, decode, score, update, report
                except Exception as exc:  # a bug, not a call's failure: fail the group's calls, serve the others
                    logger.exception("a continuous batch failed")
                    for request in group.requests:
                        request.error = request.error or exc
                    group.live = []
                self._settle(group.collect())  # finished calls leave and get their results
                if not group.live and not group.requests:
                    del self._groups[key]

    def _take_incoming(self) -> bool:
        """Move submitted calls into their groups (after the window when nothing runs); False: closed and drained."""
        with self._cond:
            while True:
                running = any(g.live for g in self._groups.values())
                if self._expected > 0 and not running and not self._closing:
                    self._cond.wait()  # a call is being handed over: a burst starts together
                    continue
                if self._incoming and not running:
                    first = min(t.submitted for _, _, t in self._incoming)
                    held = self._hold is not None and self._hold()
                    wait = first + (self.window_max_s if held else self.window_s) - time.monotonic()
                    if wait > 0 and not self._closing:
                        self._cond.wait(wait)
                        continue
                if self._incoming or self._groups:
                    break
                if self._closing:
                    return False
                self._cond.wait()
            incoming, self._incoming = self._incoming, []
        for key, fresh, ticket in incoming:
            group = self._groups.setdefault(key, fresh)
            group.add(ticket.request)
            self._tickets[id(ticket.request)] = ticket
        return True

    def _settle(self, done: list[Request]) -> None:
        for request in done:
            ticket = self._tickets.pop(id(request), None)
            if ticket is None:
                continue
            ticket.finished = time.monotonic()
            try:
                results = request.outcome()
            except BaseException as exc:
                ticket.set_exception(exc)
            else:
                ticket.set_result(results)
