"""The decoder and the AISP/BoN loop on real models (tiny random Llama and the default model)."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from torch import nn

from langchain_aisp.engine.aisp import IterationEvent, RewardError, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.decode.eager import Decoder, decode, prefill
from langchain_aisp.engine.scheduler import Scheduler


class CountingBody(nn.Module):
    """Wraps a model body and records the sequence length of every forward call."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.calls: list[int] = []

    def forward(self, input_ids, **kwargs):
        self.calls.append(int(input_ids.shape[1]))
        return self.body(input_ids=input_ids, **kwargs)


BANANA = 21285  # " banana"


def _peaked(tiny_lm):
    """The tiny model with a scaled head (peaked logits); " banana" and EOS get their own axes.

    Pushing the pre-logit along axis 0 makes " banana" the top token, along axis 1 EOS.
    """
    W = tiny_lm.head_weight * 30  # (V, d)
    for token, axis in ((BANANA, 0), (tiny_lm.eos_token_ids[0], 1)):
        W[token] = 0.0
        W[token, axis] = 10.0
    return dataclasses.replace(tiny_lm, head_weight=W)


def _axis(lm, axis: int) -> torch.Tensor:
    e = torch.zeros(lm.hidden_size)
    e[axis] = 1.0
    return e


def _length_score(indices, texts):
    return [float(len(t)) for t in texts]


def test_prompt_is_prefilled_once_for_all_samples_and_iterations(tiny_lm, encode):
    counting = CountingBody(tiny_lm.body)
    lm = dataclasses.replace(tiny_lm, body=counting)
    prompts = [encode("Hello there"), encode("A second, longer question about the weather today?")]
    run(
        lm,
        prompts,
        _length_score,
        AISPParams(method="aisp", num_samples=3, num_iterations=3),
        SamplingParams(max_tokens=6),
        seed=0,
    )
    prefills = [c for c in counting.calls if c > 1]
    assert sorted(prefills) == sorted(len(p) for p in prompts)  # one prefill per prompt, nothing else
    assert all(c == 1 for c in counting.calls if c <= 1)


def test_perturbation_applies_exactly_at_positions_before_tau(tiny_lm, encode):
    lm = _peaked(tiny_lm)
    target = BANANA
    tau, rows, max_tokens = 3, 4, 7
    decoder = Decoder.build(lm, SamplingParams(max_tokens=max_tokens))
    prompt = encode("Say something")
    V = torch.zeros(rows, tau + 1, lm.hidden_size)  # (B, tau + 1, d)
    V[:, :tau] = 200.0 * _axis(lm, 0)  # push towards " banana"
    uniforms = torch.rand(rows, max_tokens, generator=torch.Generator().manual_seed(3))  # (B, T)
    out = decode(decoder, [prefill(lm, prompt)], torch.zeros(rows, dtype=torch.long), V, uniforms)
    for row in range(rows):
        ids = out.token_ids[row]
        assert ids[:tau] == [target] * tau
        # From position tau on the model is unperturbed: the same continuation comes out of a plain
        # decode of the prompt extended by the forced tokens, fed the remaining uniforms.
        plain = decode(
            Decoder.build(lm, SamplingParams(max_tokens=max_tokens - tau)),
            [prefill(lm, prompt + [target] * tau)],
            torch.zeros(1, dtype=torch.long),
            torch.zeros(1, 1, lm.hidden_size),
            uniforms[row : row + 1, tau:],
        )
        assert ids[tau:] == plain.token_ids[0]


def test_batched_prompts_give_the_same_result_as_alone(default_lm, encode):
    prompts = [encode("Name a fruit."), encode("What colour is the sky on a clear day?")]
    params = AISPParams(method="aisp", num_samples=3, num_iterations=2)
    sampling = SamplingParams(max_tokens=10)
    together = run(default_lm, prompts, _length_score, params, sampling, seed=11)
    alone = [run(default_lm, [p], _length_score, params, sampling, seed=11)[0] for p in prompts]
    for a, b in zip(together, alone, strict=True):
        assert a.texts == b.texts
        assert a.rewards == b.rewards
        assert a.text == b.text


def test_seed_reproduces_and_different_seeds_differ(default_lm, encode):
    prompt = [encode("Tell me a short fact about the sea.")]
    params = AISPParams(method="aisp", num_samples=4, num_iterations=2)
    sampling = SamplingParams(max_tokens=12)
    first = run(default_lm, prompt, _length_score, params, sampling, seed=5)[0]
    second = run(default_lm, prompt, _length_score, params, sampling, seed=5)[0]
    other = run(default_lm, prompt, _length_score, params, sampling, seed=6)[0]
    assert first.texts == second.texts and first.text == second.text
    assert first.texts != other.texts


def test_seeded_run_leaves_the_global_rng_alone(tiny_lm, encode):
    state = torch.random.get_rng_state()
    run(
        tiny_lm,
        [encode("hi")],
        _length_score,
        AISPParams(method="aisp", num_samples=2, num_iterations=2),
        SamplingParams(max_tokens=4),
        seed=1,
    )
    assert torch.equal(state, torch.random.get_rng_state())


def test_stop_string_ends_decoding_at_its_token_and_is_cut(default_lm, encode):
    sampling = SamplingParams(max_tokens=40, stop=(".",))
    decoder = Decoder.build(default_lm, sampling)
    prompt = encode("Write two sentences about cats.")
    rows = 4
    uniforms = torch.rand(rows, 40, generator=torch.Generator().manual_seed(0))
    out = decode(
        decoder,
        [prefill(default_lm, prompt)],
        torch.zeros(rows, dtype=torch.long),
        torch.zeros(rows, 1, default_lm.hidden_size),
        uniforms,
    )
    stopped = [i for i, r in enumerate(out.finish_reasons) if r == "stop"]
    assert stopped, "no row hit the stop string in 40 tokens"
    tokenizer = default_lm.tokenizer
    for i in stopped:
        ids = out.token_ids[i]
        full = tokenizer.decode(ids, skip_special_tokens=True)
        before = tokenizer.decode(ids[:-1], skip_special_tokens=True)
        if ids[-1] in default_lm.eos_token_ids:
            continue
        assert "." in full and "." not in before  # decoding stopped at the token that completed it
        assert out.texts[i] == full[: full.index(".")]
        assert "." not in out.texts[i]


def test_eos_ends_rows_and_lengths_count_generated_tokens(tiny_lm, encode):
    lm = _peaked(tiny_lm)
    eos = lm.eos_token_ids[0]
    decoder = Decoder.build(lm, SamplingParams(max_tokens=5))
    V = torch.zeros(2, 3, lm.hidden_size)
    V[0, :2] = 200.0 * _axis(lm, 1)  # row 0 is pushed to EOS at once
    out = decode(
        decoder,
        [prefill(lm, encode("x"))],
        torch.zeros(2, dtype=torch.long),
        V,
        torch.rand(2, 5, generator=torch.Generator().manual_seed(0)),
    )
    assert out.token_ids[0] == [eos] and out.finish_reasons[0] == "stop" and int(out.lengths[0]) == 1
    assert out.texts[0] == ""
    assert int(out.lengths[1]) == len(out.token_ids[1])


def test_aisp_steers_towards_the_rewarded_token_and_keeps_the_best(tiny_lm, encode):
    lm = _peaked(tiny_lm)
    word = " banana"

    def score(indices, texts):
        return [float(t.count(word)) for t in texts]

    events: list[IterationEvent] = []
    # one shared control: the reward's one direction (axis 0) is 1 of 32 dimensions, and the update moves U
    # only as fast as the evidence for it accumulates (importance.signal_share)
    params = AISPParams(
        method="aisp", num_samples=32, num_iterations=6, sigma=1.5, tau=8, ess_target=0.25, control="shared"
    )
    result = run(
        lm, [encode("Fruit?")], score, params, SamplingParams(max_tokens=8), seed=0, on_iteration=events.append
    )[0]
    means = [sum(r) / len(r) for r in result.rewards]
    assert means[-1] > means[0] + 1.0  # the steered policy itself produces more of the rewarded token
    best_so_far = [max(max(r) for r in result.rewards[: i + 1]) for i in range(len(result.rewards))]
    assert result.reward == best_so_far[-1] == max(max(r) for r in result.rewards)
    assert result.text in result.texts[result.best_iteration]
    assert [e.iteration for e in events] == list(range(6))
    assert events[-1].best_rewards == [result.reward]
    assert result.samples == 192 and len(result.ess) == 6
    assert all(1.0 <= e <= 32.0 for e in result.ess)
    assert result.signal_shares[-1] > 0.3  # the evidence for the direction grew


def test_u_does_not_drift_when_the_reward_carries_no_signal(tiny_lm, encode):
    # Rewards drawn at random, independent of the samples: the lambda rule still makes the weights
    # uneven, but the update must leave U near its start (issue 27: it moved ~1 noise draw in 4 rounds).
    rng = random.Random(0)

    def score(indices, texts):
        return [rng.random() for _ in texts]

    params = AISPParams(method="aisp", num_samples=8, num_iterations=8, sigma=0.05, tau=8)
    results = run(
        tiny_lm, [encode("Hi"), encode("Tell me a story.")], score, params, SamplingParams(max_tokens=8), seed=0
    )
    draw = params.sigma * tiny_lm.prelogit_rms * math.sqrt(8 * tiny_lm.hidden_size)  # norm of one noise draw
    for result in results:
        assert len(result.u_norms) == 8 and len(result.signal_shares) == 8
        assert result.u_norms[-1] <= 0.2 * draw, (result.u_norms, draw)


def test_row_shift_steers_its_rows_only_under_best_of_n(tiny_lm, encode):
    lm = _peaked(tiny_lm)

    def score(indices, texts):
        return [float(t.count(" banana")) for t in texts]

    params = AISPParams(method="bon", num_samples=6, num_iterations=1)
    sampling = SamplingParams(max_tokens=8)
    cold = run(lm, [encode("Fruit?")], score, params, sampling, seed=0)[0]
    zero = run(lm, [encode("Fruit?")], score, params, sampling, seed=0, row_shift=torch.zeros(6, lm.hidden_size))[0]
    assert zero.texts == cold.texts  # a zero shift is no shift
    shift = torch.zeros(6, lm.hidden_size)
    shift[2:, 0] = 2.0 * lm.prelogit_rms  # rows 2-5 pushed along the " banana" axis at every position
    warm = run(lm, [encode("Fruit?")], score, params, sampling, seed=0, row_shift=shift)[0]
    assert warm.texts[0][:2] == cold.texts[0][:2]  # the unshifted rows are the cold rows (same uniforms)
    assert min(warm.rewards[0][2:]) > max(cold.rewards[0][2:])
    assert warm.u_norms == [0.0] and warm.signal_shares == [0.0]  # Best-of-N's U never moves


def test_row_temperature_scales_its_rows_only(tiny_lm, encode):
    params = AISPParams(method="bon", num_samples=6, num_iterations=1)
    sampling = SamplingParams(max_tokens=6)
    cold = run(tiny_lm, [encode("Hi")], _length_score, params, sampling, seed=0)[0]
    zero = run(tiny_lm, [encode("Hi")], _length_score, params, sampling, seed=0, row_temperature=torch.zeros(6))[0]
    assert zero.texts == cold.texts  # no offset: the model's own temperature
    cold_rows = torch.tensor([0.0, 0.0, -4.0, -4.0, -4.0, -4.0])  # rows 2-5 at T / e^4: near greedy
    warm = run(tiny_lm, [encode("Hi")], _length_score, params, sampling, seed=0, row_temperature=cold_rows)[0]
    assert warm.texts[0][:2] == cold.texts[0][:2]
    greedy = len(set(map(tuple, warm.sample_token_ids[0][2:])))  # different uniforms, (nearly) the greedy answer
    assert greedy <= 2 < len(set(map(tuple, cold.sample_token_ids[0][2:])))
    with pytest.raises(ValueError, match=r"row_temperature must have shape \(6,\)"):
        run(tiny_lm, [encode("Hi")], _length_score, params, sampling, row_temperature=torch.zeros(5))
    with pytest.raises(ValueError, match=r"finite log-temperature offsets in \[-5, 5\]"):
        run(tiny_lm, [encode("Hi")], _length_score, params, sampling, row_temperature=torch.full((6,), 9.0))
    bias = AISPParams(method="aisp", num_samples=6, num_iterations=1, control="token-bias")
    with pytest.raises(ValueError, match="row_temperature scales the rows of a pre-logit control"):
        run(tiny_lm, [encode("Hi")], _length_score, bias, sampling, row_temperature=torch.zeros(6))
    early = AISPParams(method="bon", num_samples=4, num_iterations=1, reject_at=2)
    with pytest.raises(ValueError, match="cannot be combined with early rejection"):
        run(tiny_lm, [encode("Hi")], _length_score, early, sampling, row_temperature=torch.zeros(4))


def test_row_shift_is_checked(tiny_lm, encode):
    params = AISPParams(method="bon", num_samples=2, num_iterations=1)
    with pytest.raises(ValueError, match=r"row_shift must have shape \(2, 32\) .* got \(3, 32\)"):
        run(tiny_lm, [encode("Hi")], _length_score, params, SamplingParams(max_tokens=2), row_shift=torch.zeros(3, 32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        run(tiny_lm, [encode("Hi")], _length_score, params, SamplingParams(max_tokens=2),
            row_shift=torch.full((2, 32), math.nan))  # fmt: skip
    with pytest.raises(TypeError, match=r"floating-point torch\.Tensor"):
        run(tiny_lm, [encode("Hi")], _length_score, params, SamplingParams(max_tokens=2), row_shift=[[0.0] * 32] * 2)


def test_initial_u_is_checked_like_every_per_prompt_argument(tiny_lm, encode):
    params = AISPParams(method="aisp", num_samples=2, num_iterations=1, tau=2)
    sampling = SamplingParams(max_tokens=2)
    prompts = [encode("Hi"), encode("Hello")]
    with pytest.raises(
        ValueError,
        match=r"initial_U must have shape \(2, 32\) \(one mean for every prompt\) or \(2, 2, 32\) "
        r"\(one per prompt\), for control='position', tau=2 .* got \(3, 32\)",
    ):
        run(tiny_lm, prompts, _length_score, params, sampling, initial_U=torch.zeros(3, 32))
    with pytest.raises(ValueError, match="initial_U contains NaN or infinite values"):
        run(tiny_lm, prompts, _length_score, params, sampling, initial_U=torch.full((2, 32), math.inf))
    with pytest.raises(TypeError, match=r"initial_U must be a floating-point torch\.Tensor, got int"):
        run(
            tiny_lm,
            prompts,
            _length_score,
            params,
            sampling,
            initial_U=torch.zeros(2, 32, dtype=torch.long).sum().item(),
        )
    one = run(tiny_lm, prompts, _length_score, params, sampling, initial_U=torch.zeros(2, 32), seed=0)
    each = run(tiny_lm, prompts, _length_score, params, sampling, initial_U=torch.zeros(2, 2, 32), seed=0)
    assert [r.texts for r in one] == [r.texts for r in each]  # one mean for all prompts == the same mean per prompt


def test_bon_and_sample_budgets_and_shared_random_numbers(default_lm, encode):
    prompt = [encode("Give me one word.")]
    sampling = SamplingParams(max_tokens=8)
    bon = run(
        default_lm, prompt, _length_score, AISPParams(method="bon", num_samples=3, num_iterations=2), sampling, seed=2
    )[0]
    single = run(default_lm, prompt, _length_score, AISPParams(method="sample"), sampling, seed=2)[0]
    assert bon.samples == 6 and single.samples == 1
    assert bon.u_norms == [0.0, 0.0]
    assert bon.reward == max(max(r) for r in bon.rewards)
    bon_one = run(
        default_lm, prompt, _length_score, AISPParams(method="bon", num_samples=1, num_iterations=1), sampling, seed=2
    )[0]
    assert single.texts == bon_one.texts  # same seed and shapes: the same random numbers


def test_reward_failure_carries_the_best_so_far(tiny_lm, encode):
    calls = {"n": 0}

    def flaky(indices, texts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("judge went away")
        return [float(len(t)) for t in texts]

    with pytest.raises(RewardError) as info:
        run(
            tiny_lm,
            [encode("a"), encode("b")],
            flaky,
            AISPParams(method="aisp", num_samples=2, num_iterations=4),
            SamplingParams(max_tokens=4),
            seed=0,
            max_batch_size=4,
        )
    err = info.value
    assert "judge went away" in str(err) and "flaky" in str(err)
    assert isinstance(err.__cause__, ConnectionError)
    assert all(p is not None and len(p.rewards) == 2 and p.text for p in err.partial)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (lambda n: [float("nan")] * n, "non-finite score nan"),
        (lambda n: [1.0] * (n + 1), "scores for"),
        (lambda n: ["high"] * n, "'high' (str)"),
        (lambda n: [None] * n, "None (NoneType)"),
        (lambda n: "0.5", "must return a sequence"),
    ],
)
def test_bad_scores_raise_clear_errors(tiny_lm, encode, bad, fragment):
    def score(indices, texts):
        return bad(len(texts))

    with pytest.raises(RewardError) as info:
        run(
            tiny_lm,
            [encode("q")],
            score,
            AISPParams(method="aisp", num_samples=2, num_iterations=1),
            SamplingParams(max_tokens=3),
        )
    assert fragment in str(info.value)


def test_identical_responses_are_scored_once(tiny_lm, encode):
    lm = _peaked(tiny_lm)
    seen: list[str] = []

    def score(indices, texts):
        seen.extend(texts)
        return [1.0] * len(texts)

    V_forced = AISPParams(method="bon", num_samples=8, num_iterations=2)
    run(lm, [encode("x")], score, V_forced, SamplingParams(max_tokens=1, top_k=1), seed=0)
    assert len(seen) == len(set(seen)) == 1  # top_k=1: every sample is identical, scored once


def test_max_batch_size_splits_rows_without_changing_results(default_lm, encode):
    prompt = [encode("Name a colour.")]
    params = AISPParams(method="bon", num_samples=4, num_iterations=1)
    sampling = SamplingParams(max_tokens=6)
    whole = run(default_lm, prompt, _length_score, params, sampling, seed=4, max_batch_size=4)[0]
    split = run(default_lm, prompt, _length_score, params, sampling, seed=4, max_batch_size=1)[0]
    assert whole.texts == split.texts


def test_position_control_gathers_evidence_too(tiny_lm, encode):
    lm = _peaked(tiny_lm)

    def score(indices, texts):
        return [float(t.count(" banana")) for t in texts]

    params = AISPParams(method="aisp", num_samples=32, num_iterations=8, sigma=1.5, tau=2, ess_target=0.25)
    result = run(lm, [encode("Fruit?")], score, params, SamplingParams(max_tokens=8), seed=0)[0]
    assert result.signal_shares[0] < 0.1 and result.signal_shares[-1] > 0.2  # one control per position: slower
    means = [sum(r) / len(r) for r in result.rewards]
    assert means[-1] > means[0]


def test_elite_fraction_reuses_the_best_sample_noise(tiny_lm, encode):
    # With a negligible sigma, reusing the best response's token-sampling noise reproduces it exactly.
    params = AISPParams(method="aisp", num_samples=4, num_iterations=2, sigma=1e-6, elite_fraction=1.0)
    result = run(tiny_lm, [encode("Hi")], _length_score, params, SamplingParams(max_tokens=6), seed=3)[0]
    best_first = result.texts[0][max(range(4), key=result.rewards[0].__getitem__)]
    assert result.texts[1] == [best_first] * 4
    fresh = run(
        tiny_lm,
        [encode("Hi")],
        _length_score,
        dataclasses.replace(params, elite_fraction=0.0),
        SamplingParams(max_tokens=6),
        seed=3,
    )[0]
    assert fresh.texts[0] == result.texts[0] and fresh.texts[1] != result.texts[1]


def test_token_step_moves_u_beyond_the_importance_sampling_update(tiny_lm, encode):
    params = AISPParams(method="aisp", num_samples=4, num_iterations=2, sigma=0.05)
    sampling = SamplingParams(max_tokens=6)
    plain = run(tiny_lm, [encode("Hi")], _length_score, params, sampling, seed=1)[0]
    drift = run(tiny_lm, [encode("Hi")], _length_score, dataclasses.replace(params, token_step=50.0), sampling, seed=1)[
        0
    ]
    assert plain.texts[0] == drift.texts[0]  # the first iteration is unaffected
    assert drift.u_norms[0] > plain.u_norms[0] * 2


def test_numpy_and_tensor_scalar_scores_are_accepted(tiny_lm, encode):
    # The engine coerces scores exactly as the rewards module does (one `as_float`).
    import numpy as np

    def score(indices, texts):
        return [np.float32(len(t)) if i % 2 else torch.tensor(float(len(t))) for i, t in enumerate(texts)]

    result = run(
        tiny_lm,
        [encode("q")],
        score,
        AISPParams(method="aisp", num_samples=2, num_iterations=1),
        SamplingParams(max_tokens=3),
        seed=0,
    )[0]
    assert result.reward == max(float(len(t)) for t in result.texts[0])
    assert all(isinstance(r, float) for r in result.rewards[0])


# --- continuous Batched AISP (issue 19 §3) -----------------------------------------------------------------


def _summary(results):
    return [(r.texts, r.rewards, r.ess, r.u_norms) for r in results]


def test_a_call_joins_a_running_run_at_the_next_iteration_and_answers_as_if_alone(tiny_lm, encode):
    params, sampling = AISPParams(method="aisp", num_samples=3, num_iterations=3), SamplingParams(max_tokens=6)
    first, second = [encode("Hello there")], [encode("Another question"), encode("A third one")]
    solo_first = run(tiny_lm, first, _length_score, params, sampling, seed=1)
    solo_second = run(tiny_lm, second, _length_score, params, sampling, seed=[2, 3])
    scheduler = Scheduler()
    tickets = {}
    events: list[tuple[str, int, list[int]]] = []

    def joiner(event: IterationEvent) -> None:
        events.append(("first", event.iteration, event.prompt_indices))
        if event.iteration == 0:  # submitted while the first call runs: it joins at the next boundary
            tickets["second"] = scheduler.submit(
                tiny_lm,
                second,
                _length_score,
                params,
                sampling,
                seed=[2, 3],
                on_iteration=lambda e: events.append(("second", e.iteration, e.prompt_indices)),
            )

    try:
        tickets["first"] = scheduler.submit(
            tiny_lm, first, _length_score, params, sampling, seed=1, on_iteration=joiner
        )
        results_first = tickets["first"].result(120)
        results_second = tickets["second"].result(120)
    finally:
        scheduler.close()
    # same answers as alone (each prompt has its own controller, generator and iteration counter)
    assert _summary(results_first) == _summary(solo_first) and _summary(results_second) == _summary(solo_second)
    # the second call ran beside the first: its iterations 0-1 shared decode batches with the first's 1-2
    assert tickets["second"].admitted < tickets["first"].finished
    assert [r.batch_prompts for r in results_first + results_second] == [3, 3, 3]
    assert events == [
        ("first", 0, [0]),
        ("first", 1, [0]),
        ("second", 0, [0, 1]),
        ("first", 2, [0]),
        ("second", 1, [0, 1]),
        ("second", 2, [0, 1]),
    ]


def test_a_failing_call_fails_alone_and_other_settings_take_turns(tiny_lm, encode):
    params, sampling = AISPParams(method="aisp", num_samples=2, num_iterations=2), SamplingParams(max_tokens=5)
    other = SamplingParams(max_tokens=4)  # incompatible settings: a group of its own
    good, bad = [encode("Fine")], [encode("Broken")]
    solo = run(tiny_lm, good, _length_score, params, sampling, seed=5)
    solo_other = run(tiny_lm, good, _length_score, params, other, seed=5)
    calls = []

    def broken(indices, texts):
        calls.append(len(texts))
        if len(calls) > 1:
            raise ConnectionError("judge went away")
        return [1.0] * len(texts)

    with Scheduler(window_s=0.2) as scheduler:  # all three wait for each other before the first iteration
        tickets = [
            scheduler.submit(tiny_lm, bad, broken, params, sampling, seed=5),
            scheduler.submit(tiny_lm, good, _length_score, params, sampling, seed=5),
            scheduler.submit(tiny_lm, good, _length_score, params, other, seed=5),
        ]
        with pytest.raises(RewardError, match="judge went away") as info:
            tickets[0].result(120)
        assert len(info.value.partial[0].rewards) == 1  # its first iteration is kept
        assert _summary(tickets[1].result(120)) == _summary(solo)
        assert _summary(tickets[2].result(120)) == _summary(solo_other)
        assert [t.batch_prompts for t in tickets] == [2, 2, 1]
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(tiny_lm, good, _length_score, params, sampling)


def test_the_scheduler_refuses_bad_calls_in_the_callers_thread(tiny_lm, encode):
    with Scheduler() as scheduler:
        with pytest.raises(ValueError, match="prompt 0 is empty"):
            scheduler.submit(tiny_lm, [[]], _length_score, AISPParams(), SamplingParams())
        with pytest.raises(ValueError, match="max_batch_size must be an integer >= 1, got 0"):
            scheduler.submit(tiny_lm, [encode("x")], _length_score, AISPParams(), SamplingParams(), max_batch_size=0)
    with pytest.raises(ValueError, match="max_prompts must be an integer >= 1 or None, got 0"):
        Scheduler(max_prompts=0)
