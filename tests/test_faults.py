"""Faults (issue 6): a reward failing mid-run, KeyboardInterrupt, async cancellation, out-of-memory.

Nothing already computed is lost (a failing reward's error carries the best answer so far),
and nothing is left behind: after an interrupted or cancelled call the same model gives the
same seeded result as before.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler

from langchain_aisp import AISPChatModel
from langchain_aisp.engine.aisp import RewardError, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.decode.eager import decode
from langchain_aisp.errors import ConstraintError, RunCancelledError, RunFailedError
from langchain_aisp.rewards import SafeReward

PARAMS = AISPParams(method="aisp", num_samples=4, num_iterations=3)
SAMPLING = SamplingParams(max_tokens=6)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def length_reward(prompt: str, response: str) -> float:
    return float(len(response))


class FailAfter:
    """A ``fn(prompt, response)`` reward that raises ``error`` on call number ``after + 1`` (and later)."""

    def __init__(self, after: int, error: BaseException, delay: float = 0.0) -> None:
        self.after, self.error, self.delay = after, error, delay
        self.calls = 0
        self.lock = threading.Lock()
        self.__name__ = "fail_after"

    def __call__(self, prompt: str, response: str) -> float:
        with self.lock:
            self.calls += 1
            calls = self.calls
        if self.delay:
            time.sleep(self.delay)
        if self.after is not None and calls > self.after:
            raise self.error
        return float(len(response)) + 0.01 * len(prompt)


def _model(tiny_lm, reward: Any, **kwargs: Any) -> AISPChatModel:
    settings: dict[str, Any] = {"num_samples": 4, "num_iterations": 3, "max_tokens": 6, "seed": 0}
    settings.update(kwargs)
    return AISPChatModel(model=tiny_lm, reward=reward, **settings)


def _no_hooks(model: torch.nn.Module) -> None:
    for sub in model.modules():
        assert not sub._forward_hooks and not sub._forward_pre_hooks and not sub._backward_hooks
    assert not model.training


def _summary(message: Any) -> tuple[Any, ...]:
    return message.content, message.response_metadata["aisp"]["rewards"]


# --- a reward that fails mid-run --------------------------------------------------------------


def _check_partial(partial: Any, prompt: str, iterations: int) -> None:
    """The partial result is the best of what was scored before the failure, for that prompt."""
    assert partial is not None and len(partial.rewards) == iterations and partial.samples == 4 * iterations
    best = max(r for it in partial.rewards for r in it)
    assert partial.reward == best
    assert partial.reward == float(len(partial.text)) + 0.01 * len(prompt)
    assert partial.best_iteration in range(iterations)


def test_reward_failing_mid_run_keeps_the_best_so_far_through_the_chat_model(tiny_lm):
    # One distinct-response score call per sample: 4 samples x 2 iterations succeed, the third iteration fails.
    reward = FailAfter(8, ConnectionError("judge went away"))
    model = _model(tiny_lm, reward, num_samples=4, num_iterations=3, max_tokens=12)
    with pytest.raises(RewardError, match="judge went away") as info:
        model.invoke("Tell me a story.")
    err = info.value
    assert "best answers found so far are in .partial" in str(err)
    assert isinstance(err.__cause__, ConnectionError)  # the reward's own exception
    assert err.response is not None and f"response {err.response_index}: " in str(err)
    (partial,) = err.partial  # how a user gets it back: err.partial[0].text / .reward
    _check_partial(partial, "Tell me a story.", iterations=reward_iterations(partial))


def reward_iterations(partial: Any) -> int:
    """Identical responses are scored once, so the failing call can fall in iteration 2 or 3."""
    assert len(partial.rewards) in (2, 3)
    return len(partial.rewards)


def test_reward_failing_mid_batch_gives_each_input_its_own_partial(tiny_lm):
    prompts = ["Tell me a story.", "Name three colours, please."]
    reward = SafeReward(FailAfter(12, ValueError("rate limited")))
    model = _model(tiny_lm, reward, max_tokens=12)
    out = model.batch(prompts, return_exceptions=True)
    for prompt, err in zip(prompts, out, strict=True):
        assert isinstance(err, RewardError) and "rate limited" in str(err)
        assert isinstance(err.__cause__, ValueError)  # the reward's own exception; the message names the sample
        assert err.response_index is not None and f"response {err.response_index}: " in str(err)
        (partial,) = err.partial
        _check_partial(partial, prompt, iterations=len(partial.rewards))


def test_engine_reward_failure_partial_is_none_before_any_score(tiny_lm, encode):
    def broken(_indices, _texts):
        raise OSError("no such judge")

    with pytest.raises(RewardError, match="no such judge") as info:
        run(tiny_lm, [encode("a"), encode("b")], broken, PARAMS, SAMPLING, seed=0)
    assert info.value.partial == [None, None]


# --- KeyboardInterrupt and cancellation ----------------------------------------------------------


def test_keyboard_interrupt_in_the_reward_leaves_the_engine_clean(tiny_lm, encode):
    prompts = [encode("a"), encode("bb")]

    def score(_indices, texts):
        return [float(len(t)) for t in texts]

    baseline = run(tiny_lm, prompts, score, PARAMS, SAMPLING, seed=3)
    calls = {"n": 0}

    def interrupting(indices, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return score(indices, texts)

    with pytest.raises(KeyboardInterrupt):
        run(tiny_lm, prompts, interrupting, PARAMS, SAMPLING, seed=3)
    _no_hooks(tiny_lm.model)
    again = run(tiny_lm, prompts, score, PARAMS, SAMPLING, seed=3)
    assert [(r.text, r.rewards, r.u_norms) for r in again] == [(r.text, r.rewards, r.u_norms) for r in baseline]


def test_keyboard_interrupt_in_the_chat_model_reward_and_progress_callback(tiny_lm):
    model = _model(tiny_lm, length_reward)
    baseline = model.invoke("Hello there")

    with pytest.raises(KeyboardInterrupt):
        _model(tiny_lm, FailAfter(5, KeyboardInterrupt())).invoke("Hello there")

    class Interrupt(BaseCallbackHandler):
        def on_custom_event(self, name, data, **kwargs):
            if data["iteration"] == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.invoke("Hello there", config={"callbacks": [Interrupt()]})
    _no_hooks(tiny_lm.model)
    assert _summary(model.invoke("Hello there")) == _summary(baseline)


def test_keyboard_interrupt_in_a_batch_stops_the_whole_batch(tiny_lm):
    """The input that runs the Batched AISP call is interrupted: the other inputs get the same error
    instead of re-running the whole batch in the background."""
    prompts = [f"Question number {i}?" for i in range(4)]
    model = _model(tiny_lm, length_reward)
    baseline = model.batch(prompts)
    reward = FailAfter(6, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _model(tiny_lm, reward).batch(prompts, config={"max_concurrency": 4})
    time.sleep(0.5)
    assert reward.calls == 7  # nobody re-ran the batch after the interrupt
    assert [_summary(m) for m in model.batch(prompts)] == [_summary(m) for m in baseline]


async def test_cancelling_an_async_call_stops_its_run_and_leaves_the_model_usable(tiny_lm):
    model = _model(tiny_lm, length_reward, num_iterations=2)
    baseline = await model.ainvoke("Hello there")
    slow = FailAfter(None, RuntimeError("unused"), delay=0.02)  # type: ignore[arg-type]
    slow_model = _model(tiny_lm, slow, num_samples=2, num_iterations=200)
    task = asyncio.create_task(slow_model.ainvoke("Hello there"))
    while slow.calls < 4:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The executor thread cannot be killed, but it stops at the next iteration boundary.
    deadline = time.monotonic() + 10
    settled = -1
    while time.monotonic() < deadline and settled != slow.calls:
        settled = slow.calls
        await asyncio.sleep(0.3)
    assert settled == slow.calls < 40, f"the cancelled run went on ({slow.calls} reward calls)"
    _no_hooks(tiny_lm.model)
    assert _summary(await model.ainvoke("Hello there")) == _summary(baseline)


# --- out of memory while decoding ----------------------------------------------------------------


def test_out_of_memory_halves_the_decoding_batch_and_keeps_results(tiny_lm, encode, monkeypatch):
    prompts = [encode("a"), encode("b")]

    def score(_indices, texts):
        return [float(len(t)) for t in texts]

    params = AISPParams(method="aisp", num_samples=4, num_iterations=2)
    baseline = run(tiny_lm, prompts, score, params, SAMPLING, seed=1, max_batch_size=64)
    sizes: list[int] = []

    def small_memory(decoder, prefixes, row_prompt, V, uniforms, **kwargs):
        sizes.append(int(row_prompt.shape[0]))
        if row_prompt.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(decoder, prefixes, row_prompt, V, uniforms, **kwargs)

    split = run(tiny_lm, prompts, score, params, SAMPLING, seed=1, max_batch_size=64, decode_fn=small_memory)
    # 2 prompts x 4 samples: halved until it fits, then that size is kept for the second iteration
    assert sizes == [8, 4] + [2] * 8
    assert [(r.text, r.rewards) for r in split] == [(r.text, r.rewards) for r in baseline]


def test_out_of_memory_on_a_single_row_is_a_clear_error(tiny_lm, monkeypatch):
    def no_memory(decoder, prefixes, row_prompt, V, uniforms, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    model = _model(tiny_lm, length_reward, num_samples=4, num_iterations=1, max_tokens=6)
    baseline = model.invoke("Hello there")
    no_room = functools.partial(run, decode_fn=no_memory)
    starved = _model(tiny_lm, length_reward, num_samples=4, num_iterations=1, max_tokens=6, runner=no_room)
    with pytest.raises(MemoryError) as info:
        starved.invoke("Hello there")
    message = str(info.value)
    assert "decoding batch sizes tried: 4, 2, 1" in message
    assert "max_tokens=6" in message and "tiny-llama" in message and "lower max_tokens" in message
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert _summary(model.invoke("Hello there")) == _summary(baseline)  # the model's own engine is untouched


# --- no lost work on any failure (issue 18): a non-reward failure at iteration 2 keeps iteration 1 ----------


def _first_iteration(reference, result) -> None:
    """``result`` holds exactly the reference run's first iteration, and its best."""
    assert result is not None and result.texts == reference.texts[:1] and result.rewards == reference.rewards[:1]
    assert result.reward == max(reference.rewards[0]) and result.best_iteration == 0


def _solo(tiny_lm, encode, **kwargs):
    params = AISPParams(method="aisp", num_samples=2, num_iterations=3)

    def score(_indices, texts):
        return [float(len(t)) for t in texts]

    return run(tiny_lm, [encode("a"), encode("b")], score, params, SAMPLING, seed=4, **kwargs)


def test_out_of_memory_at_iteration_two_keeps_iteration_one(tiny_lm, encode):
    reference = _solo(tiny_lm, encode)
    calls = []

    def memory_runs_out(decoder, prefixes, row_prompt, V, uniforms, **kwargs):
        calls.append(int(row_prompt.shape[0]))
        if len(calls) > 1:  # the second iteration's decode, at every size down to one row
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return decode(decoder, prefixes, row_prompt, V, uniforms, **kwargs)

    with pytest.raises(RunFailedError, match=r"after 1 scored iteration\(s\): MemoryError") as info:
        _solo(tiny_lm, encode, decode_fn=memory_runs_out)
    assert isinstance(info.value.__cause__, MemoryError) and "best answers" in str(info.value)
    assert calls == [4, 4, 2, 1]
    for ref, partial in zip(reference, info.value.partial, strict=True):
        _first_iteration(ref, partial)


class AnyToken:
    """A grammar that allows every token and fails (as a grammar library might) on ``fail_from``-th matcher."""

    def __init__(self, fail_from: int) -> None:
        self.fail_from, self.made = fail_from, 0

    def matcher(self, sample: int) -> AnyToken:
        self.made += 1
        self.failing = self.made > self.fail_from
        return self

    def fill_bitmask(self, bitmask, row, remaining) -> None:
        bitmask[row] = -1  # every bit set

    def advance(self, token: int) -> None:
        if self.failing:
            raise ConstraintError("the matcher's state is corrupt (simulated)")

    def is_finished(self) -> bool:
        return False


def test_grammar_matcher_error_at_iteration_two_keeps_iteration_one(tiny_lm, encode):
    reference = _solo(tiny_lm, encode, constraints=[AnyToken(10**9), AnyToken(10**9)])
    grammars = [AnyToken(2), AnyToken(2)]  # 2 samples each: the second iteration's matchers fail
    with pytest.raises(RunFailedError, match="ConstraintError") as info:
        _solo(tiny_lm, encode, constraints=grammars)
    assert isinstance(info.value.__cause__, ConstraintError)
    for ref, partial in zip(reference, info.value.partial, strict=True):
        _first_iteration(ref, partial)


def test_progress_callback_error_at_iteration_two_keeps_iteration_one(tiny_lm, encode):
    reference = _solo(tiny_lm, encode)

    def on_iteration(event):
        if event.iteration == 1:
            raise KeyError("progress bar closed")

    with pytest.raises(RunFailedError, match="KeyError") as info:
        _solo(tiny_lm, encode, on_iteration=on_iteration)
    assert isinstance(info.value.__cause__, KeyError)
    partial = info.value.partial  # the second iteration was scored before its callback failed: both are kept
    assert [len(p.rewards) for p in partial] == [2, 2]
    assert [p.texts for p in partial] == [r.texts[:2] for r in reference]


def test_a_failure_before_anything_was_scored_propagates_unchanged(tiny_lm, encode):
    def broken(*args, **kwargs):
        raise ValueError("no decoder today")

    with pytest.raises(ValueError, match="no decoder today"):  # nothing to keep: the error itself
        _solo(tiny_lm, encode, decode_fn=broken)

    def cancelled(event):  # a RunError of the caller's keeps its type and gets the partial results
        if event.iteration == 1:
            raise RunCancelledError("stop")

    with pytest.raises(RunCancelledError) as info:
        _solo(tiny_lm, encode, on_iteration=cancelled)
    assert [len(p.rewards) for p in info.value.partial] == [2, 2]
