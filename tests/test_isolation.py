"""Per-prompt isolation in one Batched AISP run (issue 10): a reward failing on one prompt's responses
fails that prompt only, and a prompt whose caller is gone leaves the batch at the next iteration.

Engine: ``run(..., on_reward_error="isolate", keep=...)``; chat model: ``batch`` / ``run_prepared``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from langchain_aisp import AISPChatModel
from langchain_aisp.chat_models import PreparedCall, RunCancelledError
from langchain_aisp.engine.aisp import RewardError, run
from langchain_aisp.engine.config import AISPParams, SamplingParams

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PARAMS = AISPParams(method="aisp", num_samples=3, num_iterations=3)
SAMPLING = SamplingParams(max_tokens=5)


def _length(indices, texts):
    return [float(len(t)) + 0.5 * j for j, t in zip(indices, texts, strict=True)]


def _summary(result: Any) -> tuple[Any, ...]:
    return result.text, result.rewards, result.u_norms


def test_isolate_fails_only_the_prompt_whose_reward_fails(tiny_lm, encode):
    prompts = [encode("first"), encode("second"), encode("third")]
    calls: list[list[int]] = []

    def score(indices, texts):
        calls.append(list(indices))
        if 1 in indices:
            raise ConnectionError("judge refused prompt 1")
        return _length(indices, texts)

    out = run(tiny_lm, prompts, score, PARAMS, SAMPLING, seed=4, on_reward_error="isolate")
    good = run(
        tiny_lm, [prompts[0], prompts[2]], lambda i, t: _length([[0, 2][k] for k in i], t), PARAMS, SAMPLING, seed=4
    )
    # The good prompts ran all iterations and got exactly what they get without the failing prompt.
    assert [_summary(r) for r in (out[0], out[2])] == [_summary(r) for r in good]
    assert out[0].error is None and out[2].error is None and len(out[0].rewards) == 3
    # The failing prompt stopped at once, with its own error (cause chained), no partial result yet.
    err = out[1].error
    assert isinstance(err, RewardError) and "judge refused prompt 1 (prompt 1, iteration 0" in str(err)
    assert (err.prompt_index, err.iteration) == (1, 0)
    assert isinstance(err.__cause__, ConnectionError) and err.partial == [None] and out[1].rewards == []
    # The joint call failed, then each prompt was scored alone; the failing prompt never came back.
    assert calls[0] == sorted(calls[0]) and set(calls[0]) == {0, 1, 2}
    assert all(1 not in c for c in calls[4:])


def test_isolated_failure_mid_run_keeps_that_prompts_best_so_far(tiny_lm, encode):
    prompts = [encode("alpha"), encode("beta")]
    seen = Counter[int]()

    def score(indices, texts):
        for j in indices:
            seen[j] += 1
        if 0 in indices and seen[0] > 3:  # prompt 0: the first iteration (3 responses) scores, the second fails
            raise ValueError("rate limited")
        return _length(indices, texts)

    out = run(tiny_lm, prompts, score, PARAMS, SAMPLING, seed=1, on_reward_error="isolate")
    (partial,) = out[0].error.partial
    assert partial is out[0] and len(partial.rewards) == 1 and partial.samples == 3
    assert partial.reward == max(partial.rewards[0]) and partial.text
    assert out[1].error is None and len(out[1].rewards) == 3 and out[1].samples == 9


def test_raise_mode_is_unchanged_and_the_mode_is_validated(tiny_lm, encode):
    def broken(_indices, _texts):
        raise OSError("down")

    with pytest.raises(RewardError, match="down") as info:
        run(tiny_lm, [encode("a"), encode("b")], broken, PARAMS, SAMPLING, seed=0)
    assert info.value.partial == [None, None]
    with pytest.raises(ValueError, match=r"on_reward_error must be one of \['raise', 'isolate'\], got 'skip'"):
        run(tiny_lm, [encode("a")], broken, PARAMS, SAMPLING, on_reward_error="skip")  # type: ignore[arg-type]


def test_keep_drops_a_prompt_at_the_next_iteration_and_its_rows_leave_the_batch(tiny_lm, encode):
    prompts = [encode("one"), encode("two"), encode("three")]
    rows_per_iteration: list[int] = []
    scored = Counter[int]()
    iterations = {"done": 0}

    def score(indices, texts):
        for j in indices:
            scored[j] += 1
        return _length(indices, texts)

    def on_iteration(event):
        iterations["done"] += 1
        rows_per_iteration.append(len(event.prompt_indices))

    def keep(j: int) -> bool:
        return not (j == 1 and iterations["done"] >= 1)  # prompt 1's caller leaves during iteration 1

    sampling = SamplingParams(max_tokens=5, temperature=1.0)
    params = AISPParams(method="bon", num_samples=3, num_iterations=3)
    out = run(tiny_lm, prompts, score, params, sampling, seed=2, keep=keep, on_iteration=on_iteration)
    assert out[1].cancelled and len(out[1].rewards) == 1 and out[1].samples == 3 and out[1].text
    assert not out[0].cancelled and len(out[0].rewards) == 3 and len(out[2].rewards) == 3
    assert rows_per_iteration == [3, 2, 2] and scored[1] <= 3  # prompt 1 was never scored again
    full = run(tiny_lm, prompts, score, params, sampling, seed=2)
    assert [_summary(r) for r in (out[0], out[2])] == [_summary(r) for r in (full[0], full[2])]


def _model(tiny_lm, reward: Any) -> AISPChatModel:
    return AISPChatModel(
        method="aisp", model=tiny_lm, reward=reward, num_samples=2, num_iterations=2, max_tokens=6, seed=0
    )


def _fails_on_poison(prompt: str, response: str) -> float:
    if "POISON" in prompt:
        raise RuntimeError(f"cannot score {prompt!r}")
    return float(len(response))


def test_chat_model_batch_fails_only_the_input_whose_reward_fails(tiny_lm):
    model = _model(tiny_lm, _fails_on_poison)
    out = model.batch(["Name a fruit.", "POISON here", "Name a colour."], return_exceptions=True)
    assert isinstance(out[1], RewardError) and "cannot score 'POISON here'" in str(out[1])
    assert out[1].partial == [None]
    alone = model.batch(["Name a fruit.", "Name a colour."])
    assert [m.content for m in (out[0], out[2])] == [m.content for m in alone]
    assert [m.response_metadata["aisp"]["rewards"] for m in (out[0], out[2])] == [
        m.response_metadata["aisp"]["rewards"] for m in alone
    ]


def test_prepare_validates_without_running_and_run_prepared_batches_compatible_calls(tiny_lm):
    model = _model(tiny_lm, _fails_on_poison)
    with pytest.raises(ValueError, match="temperature"):
        model.prepare("hi", temperature=-1)
    with pytest.raises(TypeError, match="unsupported keyword"):
        model.prepare("hi", frequency_penalty=1.0)
    calls = [
        model.prepare("Name a fruit."),
        model.prepare("POISON again"),
        model.prepare("Name a colour.", max_tokens=4),  # other settings: its own engine run
        model.prepare("Name a tree."),
    ]
    assert all(isinstance(c, PreparedCall) for c in calls)
    assert calls[0].batch_key == calls[1].batch_key != calls[2].batch_key
    assert calls[2].sampling.max_tokens == 4 and calls[0].params.num_samples == 2 and calls[0].prompt_tokens > 3
    out = model.run_prepared(calls)
    assert isinstance(out[1], RewardError)
    assert [o.response_metadata["aisp"]["batch_prompts"] for o in (out[0], out[2], out[3])] == [3, 1, 3]
    assert out[0].content == model.invoke("Name a fruit.").content  # same seed, same answer as invoke
    dropped = model.run_prepared(calls[:1] + calls[3:], keep=lambda i: i != 1)
    assert isinstance(dropped[1], RunCancelledError) and dropped[0].content == out[0].content


def test_per_prompt_seeds_give_each_prompt_its_solo_result(tiny_lm, encode):
    prompts = [encode("one"), encode("two"), encode("three")]
    together = run(tiny_lm, prompts, _length, PARAMS, SAMPLING, seed=[5, None, 9])
    for j, seed in ((0, 5), (2, 9)):
        (alone,) = run(tiny_lm, [prompts[j]], lambda i, t, j=j: _length([j] * len(i), t), PARAMS, SAMPLING, seed=seed)
        assert _summary(alone) == _summary(together[j])
    with pytest.raises(ValueError, match="got 2 seeds for 3 prompts"):
        run(tiny_lm, prompts, _length, PARAMS, SAMPLING, seed=[1, 2])
    with pytest.raises(ValueError, match="seed must be an integer"):
        run(tiny_lm, prompts, _length, PARAMS, SAMPLING, seed=[1, -2, 3])


def test_calls_that_differ_only_in_seed_share_one_engine_run(tiny_lm):
    model = _model(tiny_lm, _fails_on_poison)
    calls = [model.prepare("Name a fruit.", seed=1), model.prepare("Name a fruit.", seed=2)]
    assert calls[0].batch_key == calls[1].batch_key
    out = model.run_prepared(calls)
    assert [o.response_metadata["aisp"]["batch_prompts"] for o in out] == [2, 2]
    assert [o.content for o in out] == [model.invoke("Name a fruit.", seed=s).content for s in (1, 2)]
