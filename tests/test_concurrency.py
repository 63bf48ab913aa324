"""One AISPChatModel (one loaded model) used from 8 threads and from asyncio tasks at once (issue 6).

The reward depends on the prompt (a hash of the prompt's tag and the response), so an answer
scored against another prompt, or returned to the wrong caller, has a reward that does not
match its own prompt. Seeded results must equal the same calls made alone, one at a time.
Each run's state is private: the global RNGs, module-level containers and the model's
attributes and hooks are the same before and after.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import threading
import time
import zlib
from typing import Any

import numpy as np
import pytest
import torch
from langchain_core.messages import AIMessage

import langchain_aisp.chat_models as cm
import langchain_aisp.engine.lm as lmlib
from langchain_aisp import AISPChatModel
from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams

THREADS = 8
PROMPTS = [f"Request t{i}: write one short sentence." for i in range(THREADS)]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


class TaggedReward:
    """``fn(prompt, response)``: a pseudo-random score keyed by the prompt's tag; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @staticmethod
    def value(prompt: str, response: str) -> float:
        match = re.search(r"Request (t\d+)", prompt)
        assert match is not None, prompt
        return zlib.crc32(f"{match.group(1)}|{response}".encode()) / 2**32

    def __call__(self, prompt: str, response: str) -> float:
        with self._lock:
            self.calls.append((prompt, response))
        return self.value(prompt, response)


def _model(tiny_lm, reward: TaggedReward, **kwargs: Any) -> AISPChatModel:
    settings: dict[str, Any] = {"num_samples": 4, "num_iterations": 2, "max_tokens": 8, "seed": 0}
    settings.update(kwargs)
    return AISPChatModel(model=tiny_lm, reward=reward, **settings)


def _summary(message: AIMessage) -> tuple[Any, ...]:
    aisp = message.response_metadata["aisp"]
    return message.content, aisp["reward"], aisp["rewards"], aisp["best_iteration"]


def _assert_own_prompt(prompt: str, message: AIMessage, reward: TaggedReward) -> None:
    aisp = message.response_metadata["aisp"]
    assert aisp["reward"] == TaggedReward.value(prompt, message.content)  # scored against its own prompt
    assert (prompt, message.content) in reward.calls


def _state_snapshot(model: Any) -> dict[str, Any]:
    """Everything a run could leak into: global RNGs, module-level containers, the model's attributes and hooks."""
    containers = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("langchain_aisp"):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, (dict, list, set, bytearray)):
                containers[f"{name}.{attr}"] = repr(value)
    hooks = {
        f"{name}.{kind}": len(getattr(sub, kind))
        for name, sub in model.named_modules()
        for kind in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        )
    }
    return {
        "torch_rng": torch.get_rng_state().clone(),
        "python_rng": random.getstate(),
        "numpy_rng": repr(np.random.get_state()),
        "containers": containers,
        "module_attrs": {name: sorted(vars(sub)) for name, sub in model.named_modules()},
        "hooks": hooks,
        "global_hooks": (
            len(torch.nn.modules.module._global_forward_hooks),
            len(torch.nn.modules.module._global_forward_pre_hooks),
        ),
        "training": model.training,
        "grad_enabled": torch.is_grad_enabled(),
    }


def _assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert torch.equal(before.pop("torch_rng"), after.pop("torch_rng")), "a run moved the global torch RNG"
    assert before == after
    assert not any(after["hooks"].values()) and after["global_hooks"] == (0, 0)


def _run_threads(target, count: int) -> list[Any]:
    """Start ``count`` threads together (barrier) and return their results in order; re-raise any error."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def alone(tiny_lm):
    """Each prompt run alone, one at a time: with the instance seed (0) and with a per-prompt seed."""
    reward = TaggedReward()
    model = _model(tiny_lm, reward)
    same_seed = [model.invoke(p) for p in PROMPTS]
    own_seed = [model.invoke(p, seed=100 + i) for i, p in enumerate(PROMPTS)]
    return same_seed, own_seed


def test_prompts_render_to_the_same_length(tiny_lm):
    # Equal lengths: a batched run pads nothing, so "equal to alone" is an exact comparison.
    lengths = {len(tiny_lm.tokenizer.apply_chat_template([{"role": "user", "content": p}])) for p in PROMPTS}
    assert len(lengths) == 1


@pytest.mark.parametrize("max_concurrency", [THREADS, 3])
def test_batch_with_max_concurrency_matches_runs_alone(tiny_lm, alone, max_concurrency):
    reward = TaggedReward()
    model = _model(tiny_lm, reward)
    before = _state_snapshot(tiny_lm.model)
    out = model.batch(PROMPTS, config={"max_concurrency": max_concurrency})
    _assert_same_state(before, _state_snapshot(tiny_lm.model))
    assert [_summary(m) for m in out] == [_summary(m) for m in alone[0]]
    for prompt, message in zip(PROMPTS, out, strict=True):
        _assert_own_prompt(prompt, message, reward)


def test_raw_threads_share_one_model(tiny_lm, alone):
    reward = TaggedReward()
    model = _model(tiny_lm, reward)
    before = _state_snapshot(tiny_lm.model)

    def call(i: int) -> list[AIMessage]:
        # Two calls per thread: a per-prompt seed, then the instance seed; interleaved with the other threads.
        return [model.invoke(PROMPTS[i], seed=100 + i), model.invoke(PROMPTS[i])]

    out = _run_threads(call, THREADS)
    _assert_same_state(before, _state_snapshot(tiny_lm.model))
    for i, (own, same) in enumerate(out):
        assert _summary(own) == _summary(alone[1][i])
        assert _summary(same) == _summary(alone[0][i])
        _assert_own_prompt(PROMPTS[i], own, reward)
        _assert_own_prompt(PROMPTS[i], same, reward)
    prompts_scored = {p for p, _ in reward.calls}
    assert prompts_scored == set(PROMPTS)


def test_threads_mixing_batch_invoke_and_stream(tiny_lm, alone):
    """Batches, invokes and streams on one instance at once: no batch plan leaks into another call."""
    reward = TaggedReward()
    model = _model(tiny_lm, reward)

    def call(i: int) -> list[AIMessage]:
        if i % 3 == 0:
            return model.batch([PROMPTS[i], PROMPTS[(i + 1) % THREADS]], config={"max_concurrency": 2})
        if i % 3 == 1:
            return [model.invoke(PROMPTS[i])]
        chunks = list(model.stream(PROMPTS[i]))
        merged = chunks[0]
        for chunk in chunks[1:]:
            merged = merged + chunk
        return [AIMessage(content=merged.content, response_metadata=merged.response_metadata)]

    out = _run_threads(call, THREADS)
    for i, messages in enumerate(out):
        indices = [i, (i + 1) % THREADS] if i % 3 == 0 else [i]
        for j, message in zip(indices, messages, strict=True):
            assert _summary(message) == _summary(alone[0][j])
            _assert_own_prompt(PROMPTS[j], message, reward)


async def test_asyncio_tasks_share_one_model(tiny_lm, alone):
    reward = TaggedReward()
    model = _model(tiny_lm, reward)
    before = _state_snapshot(tiny_lm.model)
    invoked = await asyncio.gather(*(model.ainvoke(p, seed=100 + i) for i, p in enumerate(PROMPTS)))
    batched = await model.abatch(PROMPTS, config={"max_concurrency": THREADS})
    _assert_same_state(before, _state_snapshot(tiny_lm.model))
    assert [_summary(m) for m in invoked] == [_summary(m) for m in alone[1]]
    assert [_summary(m) for m in batched] == [_summary(m) for m in alone[0]]
    for prompt, message in zip(PROMPTS * 2, invoked + batched, strict=True):
        _assert_own_prompt(prompt, message, reward)


def test_unseeded_runs_leave_the_global_rngs_alone(tiny_lm, encode):
    before = _state_snapshot(tiny_lm.model)

    def call(i: int) -> str:
        result = run(
            tiny_lm,
            [encode(PROMPTS[i])],
            lambda _j, texts: [float(len(t)) for t in texts],
            AISPParams(method="aisp", num_samples=2, num_iterations=2),
            SamplingParams(max_tokens=4),
            seed=None,
        )
        return result[0].text

    _run_threads(call, 4)
    _assert_same_state(before, _state_snapshot(tiny_lm.model))


def test_lazy_loading_and_the_model_cache_load_once(tiny_lm, monkeypatch):
    """Eight threads racing to the first call of three instances: the process cache loads the model once,
    and the instance built from transformers objects wraps them once."""
    loads: list[str] = []
    wraps: list[int] = []

    def slow_load(model, **kwargs):
        loads.append(model)
        time.sleep(0.2)  # widen the race window
        return tiny_lm

    def slow_wrap(model, tokenizer, name=None):
        wraps.append(id(model))
        time.sleep(0.2)
        return tiny_lm

    monkeypatch.setattr(lmlib, "load_causal_lm", slow_load)
    monkeypatch.setattr(lmlib, "wrap_model", slow_wrap)
    cm.clear_model_cache()
    try:
        reward = TaggedReward()
        settings = {"num_samples": 2, "num_iterations": 1, "max_tokens": 4, "seed": 0}
        by_id = [AISPChatModel(model="org/not-downloaded", reward=reward, **settings) for _ in range(2)]
        wrapped = AISPChatModel(model=tiny_lm.model, tokenizer=tiny_lm.tokenizer, reward=reward, **settings)
        models = [*by_id, wrapped]
        out = _run_threads(lambda i: models[i % 3].invoke(PROMPTS[i]), THREADS)
        assert loads == ["org/not-downloaded"]
        assert wraps == [id(tiny_lm.model)]
        for prompt, message in zip(PROMPTS, out, strict=True):
            _assert_own_prompt(prompt, message, reward)
    finally:
        cm.clear_model_cache()


def test_many_distinct_stop_strings_at_once(tiny_lm):
    """transformers keeps a process-wide LRU cache of stop-string tables (8 entries); building more than
    8 distinct ones from 8 threads at once must neither fail nor mix them up."""
    reward = TaggedReward()
    model = _model(tiny_lm, reward, num_samples=2, num_iterations=1, max_tokens=4)

    def call(i: int) -> list[AIMessage]:
        return [model.invoke(PROMPTS[i], stop=[f"zq{i}-{k}"]) for k in range(3)]

    for i, messages in enumerate(_run_threads(call, THREADS)):
        for message in messages:
            _assert_own_prompt(PROMPTS[i], message, reward)
