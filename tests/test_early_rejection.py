"""Best-of-N with early rejection (Speculative Rejection): validation, determinism, selection, token savings."""

from __future__ import annotations

import math

import pytest
import torch

from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.early_rejection import kept_rows

pytestmark = pytest.mark.usefixtures("single_torch_thread")

T, C = 10, 4


def _letters_score(indices, texts):
    """A reward that separates partials: the count of the letter 'e' (ties broken by nothing)."""
    return [float(t.count("e")) for t in texts]


class Recorder:
    """A score function that keeps every call's texts."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, indices, texts):
        self.calls.append(list(texts))
        return _letters_score(indices, texts)


def test_params_validation():
    with pytest.raises(ValueError, match=r"method='bon' only.*'aisp'"):
        AISPParams(method="aisp", reject_at=8)
    with pytest.raises(ValueError, match=r"keep_fraction must be a number in \(0.0, 1.0\], got 0"):
        AISPParams(method="bon", reject_at=8, keep_fraction=0)
    with pytest.raises(ValueError, match="reject_at must be an integer"):
        AISPParams(method="bon", reject_at=-1)
    with pytest.raises(ValueError, match="no effect without early rejection"):
        AISPParams(method="bon", keep_fraction=0.5)


def test_checkpoint_must_come_before_the_end(tiny_lm, encode):
    params = AISPParams(method="bon", num_samples=4, num_iterations=1, reject_at=T)
    with pytest.raises(ValueError, match=rf"reject_at must be in \[1, max_tokens - 1\] = \[1, {T - 1}\]"):
        run(tiny_lm, [encode("Hi")], _letters_score, params, SamplingParams(max_tokens=T), seed=0)


def test_kept_rows_are_the_best_scored_with_ties_to_the_lower_row():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9], [math.nan, 1.0, -math.inf, 0.0]])  # (2, 4)
    assert kept_rows(scores, 2).tolist() == [[1, 3], [1, 3]]
    assert kept_rows(scores, 1).tolist() == [[1], [1]]
    assert kept_rows(torch.zeros(1, 3), 2).tolist() == [[0, 1]]


def test_same_seed_same_answer_and_a_subset_of_plain_bon(tiny_lm, encode):
    prompts = [encode("Tell me about the sea"), encode("A second, longer question about the weather today?")]
    sampling = SamplingParams(max_tokens=T)
    early = AISPParams(method="bon", num_samples=8, num_iterations=2, reject_at=C, keep_fraction=0.25)
    first = run(tiny_lm, prompts, _letters_score, early, sampling, seed=3)
    again = run(tiny_lm, prompts, _letters_score, early, sampling, seed=3)
    assert [r.texts for r in first] == [r.texts for r in again]
    assert [r.reward for r in first] == [r.reward for r in again]
    plain = run(tiny_lm, prompts, _letters_score, AISPParams(method="bon", num_samples=8, num_iterations=2), sampling,
                seed=3)  # fmt: skip
    for er, bon in zip(first, plain, strict=True):
        for it in range(2):  # a kept sample continues with its own uniforms: it is the one BoN drew
            assert len(er.sample_token_ids[it]) == 2
            assert all(ids in bon.sample_token_ids[it] for ids in er.sample_token_ids[it])
        assert er.reward <= bon.reward


def test_keeping_everything_reproduces_plain_bon(tiny_lm, encode):
    prompts = [encode("Tell me about the sea")]
    sampling = SamplingParams(max_tokens=T)
    keep_all = AISPParams(method="bon", num_samples=6, num_iterations=1, reject_at=C, keep_fraction=1.0)
    plain = AISPParams(method="bon", num_samples=6, num_iterations=1)
    a = run(tiny_lm, prompts, _letters_score, keep_all, sampling, seed=5)[0]
    b = run(tiny_lm, prompts, _letters_score, plain, sampling, seed=5)[0]
    assert a.sample_token_ids == b.sample_token_ids
    assert a.texts == b.texts and a.generated_tokens == b.generated_tokens


def test_the_kept_rows_are_the_best_scored_partials(tiny_lm, encode):
    prompts = [encode("Tell me about the sea"), encode("What is a cat?")]
    score = Recorder()
    n, keep = 8, 3
    params = AISPParams(method="bon", num_samples=n, num_iterations=1, reject_at=C, keep_fraction=keep / n)
    results = run(tiny_lm, prompts, score, params, SamplingParams(max_tokens=T), seed=1)
    partials = score.calls[0]
    assert len(partials) == len(prompts) * n  # every partial is scored once, before anything is finished
    for p, result in enumerate(results):
        mine = partials[p * n : (p + 1) * n]
        values = torch.tensor([_letters_score(None, [t])[0] for t in mine])
        best = kept_rows(values[None], keep)[0].tolist()
        expected = [mine[i] for i in best]
        assert len(result.texts[0]) == keep
        for partial, final in zip(expected, result.texts[0], strict=True):
            assert final.startswith(partial)
        rejected = [mine[i] for i in range(n) if i not in best]
        assert max(values[i] for i in range(n) if i not in best) <= min(values[i] for i in best)
        assert rejected  # something was rejected


def test_generated_tokens_drop_as_predicted(tiny_lm, encode):
    prompts = [encode("Tell me about the sea"), encode("What is a cat?")]
    sampling = SamplingParams(max_tokens=T)
    n, k, keep = 8, 2, 2
    early = AISPParams(method="bon", num_samples=n, num_iterations=k, reject_at=C, keep_fraction=keep / n)
    plain = AISPParams(method="bon", num_samples=n, num_iterations=k)
    er = run(tiny_lm, prompts, _letters_score, early, sampling, seed=0)
    bon = run(tiny_lm, prompts, _letters_score, plain, sampling, seed=0)
    for a, b in zip(er, bon, strict=True):
        assert all(len(ids) == T for it in b.sample_token_ids for ids in it)  # the tiny model never ends early
        assert b.generated_tokens == k * n * T
        assert a.generated_tokens == k * (n * C + keep * (T - C))  # rejected partials counted, not finished
        assert a.samples == k * keep


def test_the_chat_model_takes_early_rejection(tiny_lm):
    from langchain_aisp import AISPChatModel

    def letters(prompt: str, response: str) -> float:
        return float(response.count("e"))

    model = AISPChatModel(
        reward=letters, model=tiny_lm, method="bon", num_samples=8, num_iterations=1, reject_at=C,
        keep_fraction=0.25, max_tokens=T, seed=0,
    )  # fmt: skip
    info = model.invoke("Tell me about the sea").response_metadata["aisp"]
    assert info["samples"] == 2  # 8 started, the best 2 partials finished
    with pytest.raises(ValueError, match="method='bon' only"):
        AISPChatModel(reward=letters, model=tiny_lm, method="aisp", reject_at=C, max_tokens=T)
