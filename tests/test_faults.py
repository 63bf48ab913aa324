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

from langchain_aisp import AISPChatModel, chat_models
from langchain_aisp.engine.aisp import RewardError, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.decode.eager import decode
from langchain_aisp.rewards import SafeReward

PARAMS = AISPParams(num_samples=4, num_iterations=3)
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
    return AISPChatModel(llm=tiny_lm, reward=reward, **settings)


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

    params = AISPParams(num_samples=4, num_iterations=2)
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
    monkeypatch.setattr(chat_models, "run", functools.partial(run, decode_fn=no_memory))
    with pytest.raises(MemoryError) as info:
        model.invoke("Hello there")
    message = str(info.value)
    assert "decoding batch sizes tried: 4, 2, 1" in message
    assert "max_tokens=6" in message and "tiny-llama" in message and "lower max_tokens" in message
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    monkeypatch.undo()
    assert _summary(model.invoke("Hello there")) == _summary(baseline)
