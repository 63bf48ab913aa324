"""The chat model's model arguments, model caches, run failures per input and non-blocking async progress."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
import weakref
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from pydantic import ValidationError

from langchain_aisp import AISPChatModel
from langchain_aisp.chat import _loading
from langchain_aisp.engine.aisp import IterationEvent, PromptResult, run
from langchain_aisp.errors import RunFailedError

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def length_reward(prompt: str, response: str) -> float:
    return float(len(response))


# --- model= and max_batch_rows= ---------------------------------------------------------------------


def test_model_takes_a_causal_lm_or_a_pretrained_model(tiny_lm):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = AISPChatModel(reward=length_reward, model=tiny_lm)
        wrapped = AISPChatModel(reward=length_reward, model=tiny_lm.model, tokenizer=tiny_lm.tokenizer)
    assert loaded._get_lm() is tiny_lm and loaded.model_name == tiny_lm.name
    assert wrapped._get_lm().model is tiny_lm.model


@pytest.mark.parametrize("old", ["llm", "hf_model", "max_batch_size"])
def test_the_pre_release_spellings_are_unknown_arguments(tiny_lm, old):
    """``llm=`` / ``hf_model=`` (now ``model=``) and ``max_batch_size=`` (now ``max_batch_rows=``) are refused,
    never silently ignored: there is no release to stay compatible with."""
    with pytest.raises(ValidationError, match=rf"unknown argument\(s\) \['{old}'\]"):
        AISPChatModel(reward=length_reward, model=tiny_lm, **{old: 8})


def test_max_batch_rows_reaches_the_engine(tiny_lm):
    seen: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> list[PromptResult]:
        seen.append(kwargs["max_batch_size"])  # the engine's name for the same rows
        return run(*args, **kwargs)

    model = AISPChatModel(reward=length_reward, model=tiny_lm, max_batch_rows=8, runner=spy)
    model.invoke("Hi", num_samples=2, num_iterations=1, max_tokens=2)
    assert seen == [8]
    with pytest.raises(ValidationError, match="max_batch_rows must be an integer >= 1, got 0"):
        AISPChatModel(reward=length_reward, model=tiny_lm, max_batch_rows=0)


def test_bad_model_arguments_say_what_is_accepted(tiny_lm):
    with pytest.raises(ValidationError, match="tokenizer= goes with model=<a transformers PreTrainedModel>"):
        AISPChatModel(reward=length_reward, model=tiny_lm.model)  # no tokenizer
    with pytest.raises(ValidationError, match=r"tokenizer= goes with .* CausalLM and tokenizer given"):
        AISPChatModel(reward=length_reward, model=tiny_lm, tokenizer=tiny_lm.tokenizer)
    accepted = r"a langchain_aisp CausalLM or a transformers PreTrainedModel .*, got 3 \(int\)"
    with pytest.raises(ValidationError, match=accepted):
        AISPChatModel(reward=length_reward, model=3)


# --- the process-wide model cache ---------------------------------------------------------------


class FakeLM:
    """What the slow loader returns (weak-referenceable, like a ``CausalLM``)."""

    def __init__(self, name: str) -> None:
        self.name = name


class SlowLoader:
    def __init__(self, delay: float) -> None:
        self.delay, self.loads, self.lock = delay, [], threading.Lock()

    def __call__(self, model: str, **kwargs: Any) -> FakeLM:
        with self.lock:
            self.loads.append(model)
        time.sleep(self.delay)
        return FakeLM(model)


@pytest.fixture
def empty_cache():
    _loading.clear_model_cache()
    yield
    _loading.clear_model_cache()


def _in_threads(*calls: Any) -> list[Any]:
    out: list[Any] = [None] * len(calls)

    def target(i: int) -> None:
        out[i] = calls[i]()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_loading_one_model_does_not_block_another(empty_cache):
    loader = SlowLoader(delay=0.6)
    start = time.monotonic()
    a, b = _in_threads(
        lambda: _loading.cached_lm("a", "cpu", "auto", False, load=loader),
        lambda: _loading.cached_lm("b", "cpu", "auto", False, load=loader),
    )
    elapsed = time.monotonic() - start
    assert (a.name, b.name) == ("a", "b") and sorted(loader.loads) == ["a", "b"]
    assert elapsed < 1.1, elapsed  # one lock held through both loads would take 1.2 s or more


def test_two_threads_asking_for_one_model_load_it_once(empty_cache):
    loader = SlowLoader(delay=0.3)
    first, second = _in_threads(*[lambda: _loading.cached_lm("same", "cpu", "auto", False, load=loader)] * 2)
    assert first is second and loader.loads == ["same"]
    assert _loading._LM_LOADING == {}  # the per-key lock is gone once loaded


def test_the_cache_is_bounded_and_keeps_models_in_use(empty_cache):
    loader = SlowLoader(delay=0.0)
    size = _loading.MODEL_CACHE_SIZE

    def get(name: str) -> FakeLM:
        return _loading.cached_lm(name, "cpu", "auto", False, load=loader)

    in_use = get("in-use")  # a chat model still holds it
    for i in range(size + 2):
        get(f"m{i}")
    assert len(_loading._LM_CACHE) == size and "in-use" not in [k[0] for k in _loading._LM_CACHE]
    gc.collect()
    assert get("in-use") is in_use and loader.loads.count("in-use") == 1  # shared, not loaded twice
    assert get("m0").name == "m0" and loader.loads.count("m0") == 2  # dropped when nobody held it: loaded again
    _loading.clear_model_cache()
    assert get("in-use") is not in_use and not _loading._LM_WEAK.get(("gone", "cpu", "auto", False))


# --- one CausalLM per PreTrainedModel ------------------------------------------------------------


def test_chat_models_over_one_pretrained_model_share_its_causal_lm(tiny_lm, empty_cache):
    hf_model, tokenizer = tiny_lm.model, tiny_lm.tokenizer
    a = AISPChatModel(reward=length_reward, model=hf_model, tokenizer=tokenizer)
    b = AISPChatModel(method="aisp", reward=length_reward, model=hf_model, tokenizer=tokenizer, sigma=0.2)
    shared = a._get_lm()
    assert b._get_lm() is shared and shared.model is hf_model  # one static (CUDA-graph) cache
    assert shared is not tiny_lm  # the fixture wrapped it separately; the chat models wrap it once
    alive = weakref.ref(shared)
    del a, b, shared
    gc.collect()
    assert alive() is None  # the cache does not keep the wrapping (nor the model) alive
    c = AISPChatModel(reward=length_reward, model=hf_model, tokenizer=tokenizer)
    assert c._get_lm().model is hf_model


# --- run failures: each input its own error and its own best ------------------------------------


def _result(index: int, text: str, reward: float) -> PromptResult:
    return PromptResult(
        index=index,
        text=text,
        token_ids=[1, 2],
        reward=reward,
        finish_reason="stop",
        best_iteration=0,
        prompt_tokens=3,
        samples=2,
        generated_tokens=2,
        rewards=[[reward, reward - 1]],
        texts=[[text, text[:-1]]],
        ess=[1.0],
        lambdas=[1.0],
        u_norms=[0.0],
    )


def failing_at_iteration_two(lm, prompts, score, params, sampling, **kwargs: Any) -> list[PromptResult]:
    """A stand-in engine: iteration 1 scores, iteration 2 runs out of memory (``RunFailedError`` with partials)."""
    texts = [f"answer {i}" for i in range(len(prompts))]
    rewards = score(list(range(len(prompts))), texts)
    cause = MemoryError("out of memory at iteration 2 (simulated)")
    partial = [_result(i, t, r) for i, (t, r) in enumerate(zip(texts, rewards, strict=True))]
    raise RunFailedError("the run failed after 1 scored iteration(s): MemoryError", partial) from cause


def _failing_model(tiny_lm: Any) -> AISPChatModel:
    return AISPChatModel(
        method="aisp",
        reward=length_reward,
        model=tiny_lm,
        num_samples=2,
        num_iterations=3,
        max_tokens=4,
        runner=failing_at_iteration_two,
    )


def test_invoke_failing_mid_run_keeps_its_best_answer(tiny_lm):
    model = _failing_model(tiny_lm)
    with pytest.raises(RunFailedError, match="after 1 scored iteration") as info:
        model.invoke("Hi")
    (best,) = info.value.partial
    assert best.text == "answer 0" and best.reward == len("answer 0")
    assert isinstance(info.value.__cause__, MemoryError)


def test_batch_failing_mid_run_gives_each_input_its_own_error_and_best(tiny_lm):
    model = _failing_model(tiny_lm)
    first, second = model.batch(["Hi", "Name a fruit."], return_exceptions=True)
    assert isinstance(first, RunFailedError) and isinstance(second, RunFailedError) and first is not second
    assert [e.partial[0].text for e in (first, second)] == ["answer 0", "answer 1"]
    assert all(isinstance(e.__cause__, MemoryError) for e in (first, second))
    prepared = [model.prepare("Hi"), model.prepare("Name a fruit.")]
    outcomes = model.run_prepared(prepared)
    assert [o.partial[0].text for o in outcomes] == ["answer 0", "answer 1"]  # type: ignore[union-attr]


def test_batch_failing_before_any_score_gives_each_input_its_own_error(tiny_lm):
    def broken(*args: Any, **kwargs: Any) -> list[PromptResult]:
        raise OSError("device lost")

    model = AISPChatModel(
        method="aisp", reward=length_reward, model=tiny_lm, num_samples=2, num_iterations=1, max_tokens=4, runner=broken
    )
    first, second = model.batch(["Hi", "Name a fruit."], return_exceptions=True)
    assert isinstance(first, OSError) and isinstance(second, OSError) and first is not second
    assert str(first) == "device lost" and first.__cause__ is second.__cause__  # copies of the one error
    with pytest.raises(OSError, match="device lost"):
        model.invoke("Hi")


# --- async progress handlers do not hold up the engine ----------------------------------------


ITERATIONS, DELAY = 5, 0.2


def quick_engine(spans: list[float]):
    """A stand-in engine that reports ``ITERATIONS`` iterations at once and records its own wall-clock."""

    def run(lm, prompts, score, params, sampling, *, on_iteration=None, **kwargs: Any) -> list[PromptResult]:
        start = time.monotonic()
        texts = [f"answer {i}" for i in range(len(prompts))]
        rewards = score(list(range(len(prompts))), texts)
        for iteration in range(ITERATIONS):
            on_iteration(
                IterationEvent(iteration, ITERATIONS, list(range(len(prompts))), [[r] for r in rewards], rewards)
            )
        spans.append(time.monotonic() - start)
        return [_result(i, t, r) for i, (t, r) in enumerate(zip(texts, rewards, strict=True))]

    return run


class SlowHandler(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.iterations: list[int] = []

    async def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        await asyncio.sleep(DELAY)
        self.iterations.append(data["iteration"])


async def test_a_slow_async_handler_does_not_slow_the_run(tiny_lm):
    spans: list[float] = []
    model = AISPChatModel(
        method="aisp",
        reward=length_reward,
        model=tiny_lm,
        num_samples=2,
        num_iterations=ITERATIONS,
        runner=quick_engine(spans),
    )
    handler = SlowHandler()
    await model.ainvoke("Hi", config={"callbacks": [handler]})
    assert handler.iterations == list(range(ITERATIONS))  # every event, in order, before ainvoke returned
    assert spans[0] < DELAY * ITERATIONS / 2, spans  # a blocking handler would hold the engine 1 s

    handlers = [SlowHandler(), SlowHandler()]
    configs = [{"callbacks": [h]} for h in handlers]
    await model.abatch(["Hi", "Name a fruit."], config=configs)  # one shared engine run
    assert len(spans) == 2 and spans[1] < DELAY * ITERATIONS / 2, spans
    assert [h.iterations for h in handlers] == [list(range(ITERATIONS))] * 2


def test_a_callback_failing_at_iteration_two_keeps_the_first_iteration(tiny_lm):
    """Through the real engine: a progress handler raising after iteration 2 fails the run with a
    ``RunFailedError`` that holds the call's best of the iterations scored before."""
    from langchain_core.callbacks import BaseCallbackHandler

    class Breaks(BaseCallbackHandler):
        raise_error = True

        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if data["iteration"] == 1:
                raise KeyError("the dashboard went away")

    model = AISPChatModel(
        method="aisp", reward=length_reward, model=tiny_lm, num_samples=2, num_iterations=3, max_tokens=6, seed=0
    )
    with pytest.raises(RunFailedError) as info:
        model.invoke("Name a fruit.", config={"callbacks": [Breaks()]})
    assert isinstance(info.value.__cause__, KeyError)
    (best,) = info.value.partial
    reference = model.invoke("Name a fruit.", num_iterations=2).response_metadata["aisp"]  # the same seed
    assert best.rewards == reference["rewards"] and best.reward == reference["reward"]
