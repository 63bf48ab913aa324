"""Control memory (issue 13): the engine's initial_U and final U, ControlMemory's update, bounds, lock,
determinism and profiles, and its use by the chat model. Everything runs on the tiny random Llama."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import torch

from langchain_aisp import AISPChatModel, ControlMemory
from langchain_aisp.engine.aisp import PromptResult, control_shape, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.lm import HeadTransform
from langchain_aisp.engine.memory import (
    METADATA_KEY,
    Proposal,
    head_principal_directions,
    own_rows,
    run_with_memory,
    token_bias,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PARAMS = AISPParams(method="aisp", num_samples=3, num_iterations=2, tau=4)
SAMPLING = SamplingParams(max_tokens=4)
TOKENS = (100, 200, 300, 400)  # tokens whose frequencies carry the hand-made rewards below
BANANA = 21285  # " banana"


def _length_score(indices, texts):
    return [float(len(t)) for t in texts]


def _taught_result(index: int, good: int, bad: int, spread: float = 1.0) -> PromptResult:
    """One prompt, one iteration of two samples: the one made of ``good`` tokens scored higher."""
    return PromptResult(
        index=index,
        rewards=[[spread, 0.0]],
        sample_token_ids=[[[good] * 4, [bad] * 4]],
        texts=[["good", "bad"]],
    )


def _expected_direction(lm, good: int, bad: int, spread: float = 1.0) -> torch.Tensor:
    """g = W^T b with b = +spread/4 on ``good`` and -spread/4 on ``bad`` (advantages (r - mean) / n),
    without the head's top principal direction."""
    W = lm.head_weight.detach().double()
    g = (W[good] - W[bad]) * spread / 4
    axis = head_principal_directions(lm.head_weight, 1)[:, 0]
    return g - (g @ axis) * axis


def _teach(memory: ControlMemory, lm, prompts: int = 2, good: int = TOKENS[0], bad: int = TOKENS[1]) -> None:
    results = [_taught_result(i, good, bad) for i in range(prompts)]
    assert memory.update(lm, "r", results, Proposal(None, 1, 0.125, 0.0, 0.0), SAMPLING.max_tokens)


# --- the engine: initial_U and what a result exposes ----------------------------------------------


def test_result_exposes_final_u_mass_weights_and_sample_tokens(tiny_lm, encode):
    prompts = [encode("Hello"), encode("Name a fruit.")]
    results = run(tiny_lm, prompts, _length_score, PARAMS, SAMPLING, seed=0)
    steps, d = control_shape(tiny_lm, PARAMS, SAMPLING)
    assert (steps, d) == (4, tiny_lm.hidden_size)
    for r in results:
        assert r.U is not None and r.U.shape == (steps, d) and r.U.device.type == "cpu" and not r.U.requires_grad
        assert r.U_mass is not None and r.U_mass.shape == (steps,)
        assert float(r.U.norm()) == pytest.approx(r.u_norms[-1], rel=1e-5)
        assert r.initial_U_norm == 0.0
        assert len(r.weights) == 2 and all(sum(w) == pytest.approx(1.0) and len(w) == 3 for w in r.weights)
        assert [len(s) for s in r.sample_token_ids] == [3, 3]
        decoded = [[tiny_lm.tokenizer.decode(ids, skip_special_tokens=True) for ids in it] for it in r.sample_token_ids]
        assert [[t.strip() for t in it] for it in decoded] == [[t.strip() for t in it] for it in r.texts]
        # each iteration adds at most 1 of mass per position (weights sum to one); positions all reached here
        assert bool((r.U_mass <= 2.0 + 1e-5).all()) and bool((r.U_mass > 0).any())
    bon = run(tiny_lm, prompts, _length_score, dataclasses.replace(PARAMS, method="bon"), SAMPLING, seed=0)
    assert all(r.U is None and r.U_mass is None for r in bon)
    assert all(w == pytest.approx([1 / 3] * 3) for r in bon for w in r.weights)


def test_zero_initial_u_is_the_cold_start(tiny_lm, encode):
    prompts = [encode("Hello"), encode("Name a fruit.")]
    cold = run(tiny_lm, prompts, _length_score, PARAMS, SAMPLING, seed=3)
    zero = run(tiny_lm, prompts, _length_score, PARAMS, SAMPLING, seed=3, initial_U=torch.zeros(4, tiny_lm.hidden_size))
    assert [(r.texts, r.rewards, r.u_norms) for r in zero] == [(r.texts, r.rewards, r.u_norms) for r in cold]


def test_initial_u_steers_the_samples(tiny_lm, encode):
    """A start along one LM-head row makes that token the sample everywhere: the warm start is really applied."""
    token = 5000
    row = tiny_lm.head_weight[token].detach().float()
    start = (row / row.norm() * 2000.0).expand(4, -1).clone()  # (steps, d): logit ~ 2000 x |W[token]|
    params = dataclasses.replace(PARAMS, num_iterations=1)
    (cold,) = run(tiny_lm, [encode("Hello")], _length_score, params, SAMPLING, seed=0)
    (warm,) = run(tiny_lm, [encode("Hello")], _length_score, params, SAMPLING, seed=0, initial_U=start)
    assert warm.initial_U_norm == pytest.approx(float(start.norm()), rel=1e-5)
    assert all(ids[:4] == [token] * 4 for ids in warm.sample_token_ids[0])
    assert not all(ids[:4] == [token] * 4 for ids in cold.sample_token_ids[0])


def test_initial_u_per_prompt_and_shared(tiny_lm, encode):
    prompts = [encode("Hello"), encode("Name a fruit.")]
    d = tiny_lm.hidden_size
    per_prompt = torch.stack([torch.zeros(4, d), torch.full((4, d), 0.01)])
    results = run(tiny_lm, prompts, _length_score, PARAMS, SAMPLING, seed=0, initial_U=per_prompt)
    assert results[0].initial_U_norm == 0.0 and results[1].initial_U_norm == pytest.approx(0.01 * (4 * d) ** 0.5)
    shared_params = dataclasses.replace(PARAMS, control="shared")
    assert control_shape(tiny_lm, shared_params, SAMPLING) == (1, d)
    results = run(tiny_lm, prompts, _length_score, shared_params, SAMPLING, seed=0, initial_U=torch.ones(1, d))
    assert all(r.initial_U_norm == pytest.approx(d**0.5) and r.U.shape == (1, d) for r in results)


@pytest.mark.parametrize(
    ("initial", "params", "error", "match"),
    [
        (torch.zeros(5, 32), PARAMS, ValueError, r"shape \(4, 32\).*\(2, 4, 32\).*got \(5, 32\)"),
        (torch.zeros(3, 4, 32), PARAMS, ValueError, r"got \(3, 4, 32\)"),
        (torch.zeros(4, 32), dataclasses.replace(PARAMS, control="shared"), ValueError, r"\(1, 32\)"),
        (torch.full((4, 32), float("nan")), PARAMS, ValueError, "NaN"),
        ([[0.0] * 32] * 4, PARAMS, TypeError, "torch.Tensor"),
        (torch.zeros(4, 32, dtype=torch.long), PARAMS, TypeError, "floating-point"),
        (torch.zeros(4, 32), dataclasses.replace(PARAMS, method="bon"), ValueError, "method='aisp'"),
    ],
)
def test_initial_u_is_checked(tiny_lm, encode, initial, params, error, match):
    prompts = [encode("Hello"), encode("Name a fruit.")]
    with pytest.raises(error, match=match):
        run(tiny_lm, prompts, _length_score, params, SAMPLING, seed=0, initial_U=initial)


# --- the memory: what it learns, how it steers, its bounds -------------------------------------------


def _proposal(own: int = 1, steered: bool = False) -> Proposal:
    return Proposal(torch.zeros(3, 32) if steered else None, own, 0.125, 0.0, 0.0)


def _fold(memory: ControlMemory, lm, results, own: int = 1, steered: bool = False) -> bool:
    return memory.update(lm, "r", results, _proposal(own, steered), SAMPLING.max_tokens)


def test_token_bias_is_advantage_times_token_frequency():
    result = PromptResult(index=0, rewards=[[3.0, 1.0], [2.0, 2.0]], sample_token_ids=[[[7, 7, 8], [9]], [[1], [2]]])
    b = token_bias(result, steps=2, vocab=10)
    assert b is not None
    expected = torch.zeros(10, dtype=torch.float64)
    expected[7] = 0.5  # advantage +1 / n=2, token 7 fills the 2-token window
    expected[9] = -0.5  # (the second iteration has no reward spread and is skipped)
    assert torch.allclose(b, expected)
    assert token_bias(PromptResult(index=0, rewards=[[1.0, 1.0]], sample_token_ids=[[[1], [2]]]), 2, 10) is None


def test_the_memory_learns_the_direction_and_steers_the_learned_rows_only(tiny_lm):
    memory = ControlMemory(strength=2.0, warmup_prompts=2, kl_budget=10.0, window=10**9)
    bon = AISPParams(method="bon", num_samples=8, num_iterations=1)
    cold = memory.proposal(tiny_lm, "r", bon, SAMPLING)
    assert cold.row_shift is None and cold.own == 2 and memory.unit_shift(tiny_lm) is None  # nothing learned yet
    _teach(memory, tiny_lm, prompts=1)
    half = memory.proposal(tiny_lm, "r", bon, SAMPLING)  # one prompt of a two-prompt warm-up: half the size
    _teach(memory, tiny_lm, prompts=1)
    full = memory.proposal(tiny_lm, "r", bon, SAMPLING)
    assert (memory.updates, memory.prompts) == (2, 2)
    assert full.row_shift is not None and full.row_shift.shape == (8, tiny_lm.hidden_size)
    assert torch.equal(full.row_shift[:2], torch.zeros(2, tiny_lm.hidden_size))  # the own rows: the model's proposal
    assert full.strength == pytest.approx(2.0 * memory.level) and half.strength == pytest.approx(full.strength / 2)
    unit = memory.unit_shift(tiny_lm)
    assert torch.allclose(full.row_shift[7], full.strength * unit) and torch.equal(full.row_shift[2], full.row_shift[7])
    direction = _expected_direction(tiny_lm, TOKENS[0], TOKENS[1])
    assert float(torch.nn.functional.cosine_similarity(unit.double(), direction, dim=0)) == pytest.approx(1.0, abs=1e-5)
    logit_shift = tiny_lm.head_weight.detach().float() @ unit  # (vocab,)
    assert float(logit_shift.max()) == pytest.approx(1.0, rel=1e-4)  # unit strength: the largest boost is 1 nat
    assert logit_shift[TOKENS[0]] > 0 > logit_shift[TOKENS[1]]
    boosted = memory.boosted_tokens(tiny_lm, k=3)
    assert boosted[0] == (tiny_lm.tokenizer.decode([int(logit_shift.argmax())]), pytest.approx(2.0, rel=1e-4))
    assert len(boosted) == 3 and ControlMemory().boosted_tokens(tiny_lm) == []
    single = memory.proposal(tiny_lm, "r", AISPParams(method="sample"), SAMPLING)
    assert single.row_shift is None  # one sample: nothing to compare it with, no steering


def test_the_unit_shift_counts_the_model_head_scale(tiny_lm):
    """Granite divides its logits by ``logits_scaling``: a shift ``g`` moves them by ``scale * W g``, so the unit
    (largest boost 1 nat) is ``1 / scale`` times longer there, and boosted_tokens reports the model's own nats."""
    granite_like = dataclasses.replace(tiny_lm, head_transform=HeadTransform(scale=1 / 8))
    plain, scaled = (ControlMemory(strength=2.0, warmup_prompts=2, window=10**9) for _ in range(2))
    _teach(plain, tiny_lm)
    _teach(scaled, granite_like)
    assert torch.allclose(scaled.unit_shift(granite_like), 8 * plain.unit_shift(tiny_lm), rtol=1e-5)
    boost = (tiny_lm.head_weight.detach().float() @ scaled.unit_shift(granite_like)) / 8  # (vocab,) Granite's logits
    assert float(boost.max()) == pytest.approx(1.0, rel=1e-4)
    assert scaled.boosted_tokens(granite_like, k=1)[0][1] == pytest.approx(2.0, rel=1e-4)


def test_own_rows():
    assert [own_rows(n, 0.25) for n in (1, 2, 3, 4, 8, 32)] == [1, 1, 1, 1, 2, 8]
    assert own_rows(8, 0.9) == 7  # at least one learned row


def test_the_shift_stays_inside_the_kl_budget(tiny_lm):
    """The trust region: KL(learned || own) per token, estimated from the own rows' tokens, under kl_budget; the
    estimate agrees with the exact KL at contexts where the own rows' tokens are the model's samples."""
    lm = _peaked_lm(tiny_lm)
    params = AISPParams(method="bon", num_samples=8, num_iterations=1)
    sampling = SamplingParams(max_tokens=4, temperature=0.7)
    for budget in (0.01, 0.05):
        memory = ControlMemory(strength=50.0, warmup_prompts=1, kl_budget=budget, floor=1.0)
        _teach(memory, lm, prompts=2)
        results = run(lm, [[1, 2, 3], [4, 5, 6]], _length_score, params, sampling, seed=0)
        memory.update(lm, "r", results, Proposal(None, 2, 1.0, 0.0, 0.0), sampling.max_tokens)
        proposal = memory.proposal(lm, "r", params, sampling)
        assert proposal.strength < 50.0  # capped by the budget, not by the strength
        assert proposal.kl == pytest.approx(budget, rel=1e-6)


def test_frozen_memory_steers_but_does_not_learn(tiny_lm):
    memory = ControlMemory(warmup_prompts=1)
    _teach(memory, tiny_lm)
    memory.learning = False
    assert not _fold(memory, tiny_lm, [_taught_result(0, 1, 2)])
    assert memory.proposal(tiny_lm, "r", AISPParams(num_samples=8), SAMPLING).steered
    memory.learning = True
    flat = PromptResult(index=0, rewards=[[1.0, 1.0]], sample_token_ids=[[[], []]])
    assert not ControlMemory().update(tiny_lm, "r", [flat], _proposal(), 4)  # nothing to learn, nothing bound


def test_window_forgets_old_prompts(tiny_lm):
    memory = ControlMemory(window=1, warmup_prompts=1)
    _teach(memory, tiny_lm, prompts=2, good=TOKENS[0], bad=TOKENS[1])
    _teach(memory, tiny_lm, prompts=2, good=TOKENS[2], bad=TOKENS[3])
    unit = memory.unit_shift(tiny_lm)
    cosine = torch.nn.functional.cosine_similarity(unit.double(), _expected_direction(tiny_lm, *TOKENS[2:]), dim=0)
    assert float(cosine) > 0.99  # only the latest call is remembered
    forever = ControlMemory()
    _teach(forever, tiny_lm, prompts=2, good=TOKENS[0], bad=TOKENS[1])
    _teach(forever, tiny_lm, prompts=2, good=TOKENS[2], bad=TOKENS[3])
    both = forever.unit_shift(tiny_lm).double()
    assert float(torch.nn.functional.cosine_similarity(both, _expected_direction(tiny_lm, *TOKENS[2:]), dim=0)) < 0.9


def test_a_memory_refuses_another_model_or_reward(tiny_lm, default_lm):
    memory = ControlMemory()
    _teach(memory, tiny_lm)
    assert (memory.model, memory.reward) == ("tiny-llama", "r")
    with pytest.raises(ValueError, match="reward 'r' but the call uses reward 'other'"):
        memory.update(tiny_lm, "other", [_taught_result(0, 1, 2)], _proposal(), 4)
    with pytest.raises(ValueError, match="model 'tiny-llama' but the call uses model 'SmolLM2-135M-Instruct'"):
        memory.proposal(default_lm, "r", PARAMS, SAMPLING)
    with pytest.raises(ValueError, match="reward 'r' but the call uses reward 'x'"):  # refused before it runs
        memory.proposal(tiny_lm, "x", dataclasses.replace(PARAMS, method="bon"), SAMPLING)
    wide = ControlMemory(model="tiny-llama")
    _teach(wide, dataclasses.replace(tiny_lm, head_weight=torch.zeros(tiny_lm.head_weight.shape[0], 16)))
    with pytest.raises(ValueError, match=r"width 16 .* hidden size 32"):
        wide.proposal(tiny_lm, "r", PARAMS, SAMPLING)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"signal": "control"}, "signal must be one of"),
        ({"strength": 0}, r"strength must be a number in \(0.0, 100.0\], got 0"),
        ({"strength": float("nan")}, "strength must be a finite number"),
        ({"own_share": 1.0}, "own_share must be a number in"),
        ({"kl_budget": -1}, "kl_budget must be a number"),
        ({"window": 0}, "window must be an integer >= 1"),
        ({"warmup_prompts": 0}, "warmup_prompts must be an integer >= 1"),
        ({"check_window": 1}, "check_window must be an integer >= 2"),
        ({"floor": 2.0}, "floor must be a number"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ControlMemory(**kwargs)


def test_head_principal_directions_and_their_removal(tiny_lm):
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([10.0, 5.0] + [1.0] * 14)
    W = torch.randn(500, 16, generator=generator) * scales  # a head with two dominant directions
    axes = head_principal_directions(W, 2)
    assert axes.shape == (16, 2)
    top = torch.linalg.eigh(W.T.double() @ W.double())[1][:, [-1, -2]]  # the two largest eigenvalues' vectors
    assert torch.allclose((axes.T @ top).abs(), torch.eye(2, dtype=torch.float64), atol=1e-4)
    assert torch.equal(axes, head_principal_directions(W, 2))  # deterministic: no random start
    # like a real LM head: every row shares a common component (the mean row), the top direction
    common = torch.randn(tiny_lm.hidden_size, generator=generator)
    lm = dataclasses.replace(tiny_lm, head_weight=tiny_lm.head_weight.detach() + 0.1 * common)
    axis = head_principal_directions(lm.head_weight, 1)[:, 0].float()
    assert float(torch.nn.functional.cosine_similarity(axis, common, dim=0)).__abs__() > 0.99
    removed, kept = ControlMemory(warmup_prompts=1), ControlMemory(warmup_prompts=1, frequency_axes=0)
    for memory in (removed, kept):
        _teach(memory, lm)
    assert abs(float(removed.unit_shift(lm) @ axis)) < 1e-5 * float(removed.unit_shift(lm).norm())
    assert abs(float(kept.unit_shift(lm) @ axis)) > 1e-2 * float(kept.unit_shift(lm).norm())
    with pytest.raises(ValueError, match="frequency_axes must be an integer in"):
        ControlMemory(frequency_axes=-1)


# --- steering under Best-of-N and AISP, and the self-check --------------------------------------------


def _peaked_lm(tiny_lm):
    """The tiny model with a scaled head; " banana" gets its own pre-logit axis (0)."""
    W = tiny_lm.head_weight.detach() * 30  # (V, d)
    W[BANANA] = 0.0
    W[BANANA, 0] = 10.0
    return dataclasses.replace(tiny_lm, head_weight=W)


def _bananas(indices, texts):
    return [float(t.count(" banana")) for t in texts]


def test_a_steered_call_keeps_its_own_rows_and_shifts_the_others(tiny_lm, encode):
    lm = _peaked_lm(tiny_lm)
    params = AISPParams(method="bon", num_samples=8, num_iterations=1)
    sampling = SamplingParams(max_tokens=8)
    memory = ControlMemory(warmup_prompts=1, strength=8.0, floor=1.0, kl_budget=10.0, temperature_probe=0.0)
    memory.update(lm, "bananas", [_taught_result(0, BANANA, TOKENS[1])], _proposal(), 8)
    (warm,) = run_with_memory(memory, lm, [encode("Fruit?")], _bananas, params, sampling, reward="bananas", seed=0)
    (cold,) = run(lm, [encode("Fruit?")], _bananas, params, sampling, seed=0)
    assert warm.texts[0][:2] == cold.texts[0][:2]  # own rows: the model's proposal, same uniforms
    assert sum(warm.rewards[0][2:]) >= sum(cold.rewards[0][2:]) + 4  # learned rows: many more bananas
    assert warm.memory == {
        "own_rows": 2, "level": 1.0, "strength": pytest.approx(8.0), "kl": pytest.approx(0.0),
        "temperature_offset": 0.0,
    }  # fmt: skip
    aisp = AISPParams(method="aisp", num_samples=8, num_iterations=2, tau=8)
    (steered,) = run_with_memory(memory, lm, [encode("Fruit?")], _bananas, aisp, sampling, reward="bananas", seed=0)
    assert sum(steered.rewards[1][2:]) >= 2 and sum(steered.rewards[1][:2]) == 0  # AISP's rows are shifted too
    assert memory.updates == 3


def test_the_learned_rows_explore_the_temperature_and_follow_the_cooler_half(tiny_lm):
    memory = ControlMemory(check_window=8)
    bon = AISPParams(method="bon", num_samples=8, num_iterations=1)
    proposal = memory.proposal(tiny_lm, "r", bon, SAMPLING)
    assert proposal.row_shift is None  # nothing learned: no shift yet, but the learned rows explore the temperature
    assert proposal.row_temperature.tolist() == pytest.approx([0, 0, 0.3, -0.3, 0.3, -0.3, 0.3, -0.3])
    rows = [[0.0, 0.1, 0.2, 1.0, 0.1, 0.9, 0.3, 1.1]]  # own, own, then hot / cool alternating: the cool rows win
    for call in range(12):
        result = PromptResult(index=0, rewards=[[r + 0.01 * call for r in rows[0]]], sample_token_ids=[[[5]] * 8])
        memory.update(tiny_lm, "r", [result], memory.proposal(tiny_lm, "r", bon, SAMPLING), 4)
    offset = memory.proposal(tiny_lm, "r", bon, SAMPLING).temperature_offset
    assert offset < 0 and memory.stats()["temperature"]["offset"] == offset
    assert ControlMemory(temperature_probe=0.0).proposal(tiny_lm, "r", bon, SAMPLING).row_temperature is None


def test_the_memory_backs_off_when_the_reward_changes(tiny_lm, encode):
    """A memory learns "more bananas" and steers harder while its rows win; the same reward name then starts
    to punish bananas: the self-check sees the learned rows lose and the level falls (while the direction
    itself is relearned from the new rewards)."""
    lm = _peaked_lm(tiny_lm)
    params = AISPParams(method="bon", num_samples=8, num_iterations=1)
    sampling = SamplingParams(max_tokens=6)
    memory = ControlMemory(warmup_prompts=2, strength=8.0, kl_budget=10.0, check_window=8, floor=0.25,
                           temperature_probe=0.0)  # fmt: skip
    prompts = [encode(q) for q in ("Fruit?", "Snack?", "Name a fruit.", "Lunch?")]
    sign = {"value": 1.0}

    def score(indices, texts):
        return [sign["value"] * t.count(" banana") + 0.01 * len(t) for t in texts]

    levels = []
    for call in range(60):
        if call == 30:
            sign["value"] = -1.0  # the reward changes under the same name
        run_with_memory(memory, lm, prompts[call % 4 : call % 4 + 1], score, params, sampling, reward="r", seed=call)
        levels.append(memory.level)
    assert levels[:4] == [0.25] * 4 and levels[29] == 1.0  # it steered harder while the learned rows won
    assert min(levels[30:]) == 0.25  # after the change: back to the probe level


# --- thread safety, determinism, profiles ------------------------------------------------------------


def test_concurrent_updates_are_all_folded_in(tiny_lm):
    calls = [[_taught_result(i, TOKENS[i % 2], TOKENS[2 + i % 2], spread=1.0 + i % 5)] for i in range(64)]
    sequential = ControlMemory(window=10_000)
    for results in calls:
        _fold(sequential, tiny_lm, results)
    shared = ControlMemory(window=10_000)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(part: list[list[PromptResult]]) -> None:
        try:
            barrier.wait()
            for results in part:
                _fold(shared, tiny_lm, results)
                shared.proposal(tiny_lm, "r", PARAMS, SAMPLING)  # reads interleave with writes
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(calls[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert (shared.updates, shared.prompts) == (64, 64)
    # the same average up to the order of the (slow) forgetting
    both, alone = shared.unit_shift(tiny_lm), sequential.unit_shift(tiny_lm)
    assert float((both - alone).norm()) < 1e-2 * float(alone.norm())  # elementwise rtol fails near-zero coordinates


def test_same_calls_and_seeds_give_the_same_memory(tiny_lm, encode):
    prompts = [[encode("Hello"), encode("Name a fruit.")], [encode("Name a colour."), encode("Say hi.")]] * 2
    params = AISPParams(method="bon", num_samples=4, num_iterations=1)
    runs = []
    for _ in range(2):
        memory = ControlMemory(warmup_prompts=1)
        texts = []
        for i, batch in enumerate(prompts):
            results = run_with_memory(memory, tiny_lm, batch, _length_score, params, SAMPLING, reward="len", seed=i)
            texts.append([r.texts for r in results])
        runs.append((memory, texts))
    (a, texts_a), (b, texts_b) = runs
    assert texts_a == texts_b and a.updates == b.updates == 4
    assert torch.equal(a._sum, b._sum) and a.stats() == b.stats()


def test_save_load_round_trip(tiny_lm, tmp_path):
    memory = ControlMemory(strength=3.0, window=50, warmup_prompts=3, own_share=0.5, frequency_axes=2, kl_budget=0.3)
    _teach(memory, tiny_lm)
    _teach(memory, tiny_lm, prompts=3)
    memory.update(tiny_lm, "r", [_taught_result(0, 1, 2)], _proposal(steered=True), 4)  # the check moves
    path = memory.save(tmp_path / "profile.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()[METADATA_KEY])
    assert {k: header[k] for k in ("model", "reward", "width", "updates", "prompts", "signal")} == {
        "model": "tiny-llama", "reward": "r", "width": 32, "updates": 3, "prompts": 6, "signal": "tokens",
    }  # fmt: skip
    loaded = ControlMemory.load(path, model="tiny-llama", reward="r")
    bon = AISPParams(method="bon", num_samples=8, num_iterations=1)
    a, b = loaded.proposal(tiny_lm, "r", bon, SAMPLING), memory.proposal(tiny_lm, "r", bon, SAMPLING)
    assert torch.equal(a.row_shift, b.row_shift) and (a.level, a.strength, a.kl) == (b.level, b.strength, b.kl)
    assert loaded.stats() == memory.stats()  # the self-check's state came back too
    assert (loaded.strength, loaded.window, loaded.warmup_prompts, loaded.own_share, loaded.kl_budget) == (
        3.0, 50, 3, 0.5, 0.3,
    )  # fmt: skip
    assert loaded.frequency_axes == 2 and torch.equal(loaded._axes, memory._axes) and loaded.learning
    _teach(loaded, tiny_lm)  # a loaded profile keeps learning
    assert loaded.updates == 4
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file


def test_load_errors(tiny_lm, tmp_path):
    memory = ControlMemory()
    with pytest.raises(ValueError, match="learned nothing yet"):
        memory.save(tmp_path / "empty.safetensors")
    _teach(memory, tiny_lm)
    path = memory.save(tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match=r"profile for model 'tiny-llama', not 'Qwen/Qwen2.5-0.5B-Instruct'"):
        ControlMemory.load(path, model="Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(ValueError, match="profile for reward 'r', not 'politeness'"):
        ControlMemory.load(path, reward="politeness")
    with pytest.raises(FileNotFoundError, match="no control-memory profile"):
        ControlMemory.load(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        ControlMemory.load(corrupt)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"sum": torch.zeros(32)}, str(plain))
    with pytest.raises(ValueError, match="not a control-memory profile"):
        ControlMemory.load(plain)
    with safe_open_header(path) as header:
        bad_shape = tmp_path / "bad.safetensors"
        save_file({"sum": torch.zeros(31, dtype=torch.float64)}, str(bad_shape), metadata={METADATA_KEY: header})
    with pytest.raises(ValueError, match=r"tensor 'sum' should have shape \(32,\)"):
        ControlMemory.load(bad_shape)
    future = tmp_path / "future.safetensors"
    save_file(
        {"sum": torch.zeros(32)}, str(future), metadata={METADATA_KEY: json.dumps({**json.loads(header), "format": 9})}
    )
    with pytest.raises(ValueError, match="format 9 is not supported"):
        ControlMemory.load(future)
    loaded = ControlMemory.load(path)
    with pytest.raises(ValueError, match="learned for model 'tiny-llama'"):
        loaded.proposal(dataclasses.replace(tiny_lm, name="other"), "r", PARAMS, SAMPLING)


class safe_open_header:  # noqa: N801 - a tiny context manager for the test above
    def __init__(self, path):
        self.path = path

    def __enter__(self) -> str:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            return handle.metadata()[METADATA_KEY]

    def __exit__(self, *exc) -> None:
        return None


# --- the chat model --------------------------------------------------------------------------------


def _chat(tiny_lm, memory=None, **kwargs):
    base = {"reward": _length_score_reward, "model": tiny_lm, "method": "aisp", "num_samples": 3, "num_iterations": 2}
    base["tau"] = 4
    base.update({"max_tokens": 4, "seed": 0, "control_memory": memory, **kwargs})
    return AISPChatModel(**base)


def _length_score_reward(prompt: str, response: str) -> float:
    return float(len(response))


def test_chat_metadata_without_memory(tiny_lm):
    aisp = _chat(tiny_lm).invoke("Name a fruit.").response_metadata["aisp"]
    assert aisp["warm_start"] is False and aisp["memory"] is None


def test_chat_model_steers_and_updates_once_per_call(tiny_lm):
    llm = _chat(tiny_lm)
    memory = ControlMemory(strength=0.5, warmup_prompts=2, reward=llm.reward_name)
    llm = _chat(tiny_lm, memory, num_samples=4)
    _teach_chat = [_taught_result(i, TOKENS[0], TOKENS[1]) for i in range(2)]
    memory.update(tiny_lm, llm.reward_name, _teach_chat, Proposal(None, 1, 0.125, 0.0, 0.0), 4)
    msg = llm.invoke("Name a fruit.")
    aisp = msg.response_metadata["aisp"]
    assert aisp["warm_start"] is True and aisp["memory"]["own_rows"] == 1
    assert aisp["memory"]["strength"] == pytest.approx(0.5 * memory._check.floor, rel=1e-2)
    assert memory.updates == 2 and memory.prompts == 3
    llm.batch(["Name a fruit.", "Name a colour.", "Name a city."])
    assert memory.updates == 3 and memory.prompts == 6  # Batched AISP: one update with all prompts' results
    bon = llm.invoke("Name a fruit.", method="bon").response_metadata["aisp"]
    assert bon["warm_start"] is True and memory.updates == 4  # Best-of-N is steered and teaches too
    bound = llm.bind_tools([_add_tool()], tool_choice="add")
    bound.invoke("1 + 2?")
    assert memory.updates == 4  # a call with tools bound neither uses nor teaches the memory
    assert llm._identifying_params["control_memory"] == "tokens, strength 0.5"


def test_chat_model_with_memory_keeps_its_timeout(tiny_lm):
    """run_with_memory passes the call's deadline through: the slow run stops after its first
    iteration with its best answer, and that scored iteration still teaches the memory."""
    import time

    def slow(prompt: str, response: str) -> float:
        time.sleep(0.6)  # one scored response outlasts the timeout
        return float(len(response))

    memory = ControlMemory()
    llm = _chat(tiny_lm, memory, reward=slow, num_iterations=4)
    aisp = llm.invoke("Name a fruit.", timeout=0.5).response_metadata["aisp"]
    assert aisp["timed_out"] is True and len(aisp["rewards"]) == 1
    assert memory.updates == 1 and memory.prompts == 1


def _add_tool():
    from langchain_core.tools import tool

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return add


def test_chat_model_learns_from_scratch_and_refuses_another_model(tiny_lm):
    memory = ControlMemory()
    llm = _chat(tiny_lm, memory)
    first = llm.invoke("Name a fruit.").response_metadata["aisp"]
    assert first["warm_start"] is False and first["memory"]["strength"] == 0.0  # cold: every row is the model's
    assert memory.updates == 1 and memory.model == "tiny-llama"
    other = ControlMemory(model="another-model")
    with pytest.raises(ValueError, match="learned for model 'another-model'"):
        _chat(tiny_lm, other).invoke("Name a fruit.")


def test_control_memory_true_gives_each_instance_its_own_memory(tiny_lm):
    first, second = _chat(tiny_lm, True), _chat(tiny_lm, True)
    assert isinstance(first.control_memory, ControlMemory) and first.control_memory is not second.control_memory
    first.invoke("Name a fruit.")
    assert first.control_memory.updates == 1 and second.control_memory.updates == 0
    assert first.control_memory.reward == first.reward_name  # bound to the instance's one reward
    assert _chat(tiny_lm, False).control_memory is None


def test_chat_model_with_memory_serialises_with_a_marker(tiny_lm):
    from langchain_core.load import dumpd, load

    model = AISPChatModel(
        method="aisp", reward="test_memory:_length_score_reward", control_memory=ControlMemory(), num_samples=2
    )
    data = dumpd(model)
    assert data["kwargs"]["control_memory"].startswith("<not serialisable>")
    with pytest.raises(ValueError, match="control memory is not serialised"):
        load(data, valid_namespaces=["langchain_aisp"], allowed_objects=[AISPChatModel])


def test_a_memory_that_would_do_nothing_is_refused_not_ignored(tiny_lm):
    with pytest.raises(ValueError, match=r"would do nothing with method='sample'"):
        _chat(tiny_lm, ControlMemory(), method="sample", num_iterations=1)
    learner = ControlMemory(warmup_prompts=1)
    _chat(tiny_lm, learner, method="bon").invoke("Name a fruit.")  # Best-of-N teaches the memory
    assert learner.updates == 1
    frozen = ControlMemory(learning=False)
    _chat(tiny_lm, frozen, method="bon")  # a frozen memory still steers Best-of-N: accepted
