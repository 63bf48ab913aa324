"""Reward protocol glue: failure semantics (SafeReward), deduplication, composition, engine integration."""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_aisp.rewards import (
    FunctionReward,
    LengthReward,
    Normalized,
    RegexReward,
    Reward,
    RewardFailure,
    RewardWarning,
    SafeReward,
    WeightedSum,
    as_reward,
    batched,
    score_fn,
)

CONV = [SystemMessage("Be brief."), HumanMessage("Say hi")]


class ListReward(Reward):
    """Returns a fixed list (whatever is in it) and records what it was asked."""

    def __init__(self, values, name="listed"):
        self.values = values
        self.name = name
        self.calls: list[list[str]] = []

    def score(self, conversations, responses):
        self.calls.append(list(responses))
        return self.values


def convs(n):
    return [CONV] * n


# --- exceptions -> RewardFailure ---------------------------------------------------


def test_function_reward_that_raises_names_reward_and_sample():
    def picky(prompt, response):
        if response == "boom":
            raise ZeroDivisionError("bad sample")
        return 1.0

    safe = SafeReward(picky)
    with pytest.raises(RewardFailure) as info:
        safe.score(convs(3), ["ok", "fine", "boom"])
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.reward == "picky" and err.index == 2 and err.indices == [2]
    assert "reward picky raised ZeroDivisionError: bad sample on sample 2" in str(err)
    assert "'boom'" in str(err)
    assert isinstance(err.__cause__, ZeroDivisionError)


def test_sample_index_refers_to_original_positions_after_dedupe():
    def picky(prompt, response):
        if response == "boom":
            raise KeyError("x")
        return 0.0

    with pytest.raises(RewardFailure) as info:
        SafeReward(picky).score(convs(4), ["ok", "ok", "ok", "boom"])
    assert info.value.index == 3


def test_batched_reward_that_raises_names_the_batch():
    @batched
    def batch_fail(prompts, responses):
        raise ValueError("backend down")

    with pytest.raises(RewardFailure) as info:
        SafeReward(batch_fail).score(convs(3), ["a", "b", "c"])
    err = info.value
    assert err.index is None and err.indices == [0, 1, 2]
    assert "reward batch_fail raised ValueError: backend down while scoring a batch of 3 responses" in str(err)
    assert "(indices [0, 1, 2])" in str(err)


def test_nested_reward_failure_passes_through_unchanged():
    inner = SafeReward(lambda p, r: 1 / 0, name="inner")
    with pytest.raises(RewardFailure) as info:
        SafeReward(inner, name="outer").score(convs(1), ["x"])
    assert info.value.reward == "inner" and info.value.index == 0


# --- invalid values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (None, "None"),
        ("0.5", "'0.5' (str)"),
        (True, "True (bool)"),
        ([1.0], "[1.0] (list)"),
    ],
)
def test_invalid_score_raises_by_default(bad, shown):
    reward = ListReward([0.5, bad, 0.2])
    with pytest.raises(RewardFailure) as info:
        SafeReward(reward).score(convs(3), ["a", "b", "c"])
    err = info.value
    assert err.index == 1
    assert f"reward listed returned an invalid score {shown}" in str(err)
    assert "for sample 1 (response 'b')" in str(err)
    assert "on_invalid='worst'" in str(err)


def test_numpy_and_tensor_scalars_are_accepted():
    import numpy as np

    reward = ListReward([np.float32(0.25), torch.tensor(0.5), 2])
    assert SafeReward(reward).score(convs(3), ["a", "b", "c"]) == [0.25, 0.5, 2.0]


def test_on_invalid_worst_uses_worst_valid_score_of_batch_and_warns():
    reward = ListReward([3.0, math.nan, -1.5, None])
    with pytest.warns(
        RewardWarning, match=r"sample 1 .* and 1 other samples; using the worst valid score of the batch"
    ):
        out = SafeReward(reward, on_invalid="worst").score(convs(4), ["a", "b", "c", "d"])
    assert out == [3.0, -1.5, -1.5, -1.5]


def test_on_invalid_worst_with_floor():
    reward = ListReward([3.0, math.inf])
    with pytest.warns(RewardWarning, match=r"configured floor \(-10\)"):
        out = SafeReward(reward, on_invalid="worst", floor=-10).score(convs(2), ["a", "b"])
    assert out == [3.0, -10.0]


def test_on_invalid_worst_without_any_valid_score_needs_a_floor():
    with pytest.raises(RewardFailure, match=r"no valid score in a batch of 2 .* no floor is set"):
        SafeReward(ListReward([None, math.nan]), on_invalid="worst").score(convs(2), ["a", "b"])
    with pytest.warns(RewardWarning):
        out = SafeReward(ListReward([None, math.nan]), on_invalid="worst", floor=0.0).score(convs(2), ["a", "b"])
    assert out == [0.0, 0.0]


def test_valid_scores_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SafeReward(ListReward([1, 2.5]), on_invalid="worst").score(convs(2), ["a", "b"]) == [1.0, 2.5]


@pytest.mark.parametrize("on_invalid", ["raise", "worst"])
def test_wrong_count_always_raises(on_invalid):
    with pytest.raises(RewardFailure, match=r"returned 2 scores for 3 responses \(indices \[0, 1, 2\]\)"):
        SafeReward(ListReward([1.0, 2.0]), on_invalid=on_invalid).score(convs(3), ["a", "b", "c"])


@pytest.mark.parametrize("value", ["0.1", None, 0.5])
def test_non_sequence_return_raises(value):
    with pytest.raises(RewardFailure, match="expected a list of 1 floats"):
        SafeReward(ListReward(value)).score(convs(1), ["a"])


def test_safe_reward_validates_its_arguments():
    with pytest.raises(ValueError, match="on_invalid must be 'raise' or 'worst', got 'ignore'"):
        SafeReward(lambda p, r: 0.0, on_invalid="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be None or a number of seconds > 0, got -1"):
        SafeReward(lambda p, r: 0.0, timeout=-1)
    with pytest.raises(ValueError, match="floor must be None or a finite number, got nan"):
        SafeReward(lambda p, r: 0.0, floor=math.nan)
    with pytest.raises(ValueError, match="got 2 conversations for 1 responses"):
        SafeReward(lambda p, r: 0.0).score(convs(2), ["a"])


# --- timeouts -------------------------------------------------------------------------


def test_slow_function_reward_times_out_naming_the_sample():
    def slow(prompt, response):
        if response == "slow":
            time.sleep(2.0)
        return 1.0

    start = time.perf_counter()
    with pytest.raises(
        RewardFailure, match=r"reward slow timed out after 0.1 s on sample 1 \(response 'slow'\)"
    ) as info:
        SafeReward(slow, timeout=0.1).score(convs(2), ["fast", "slow"])
    assert time.perf_counter() - start < 1.5
    assert info.value.index == 1
    assert isinstance(info.value.__cause__, TimeoutError)


def test_slow_batched_reward_times_out_naming_the_batch():
    @batched
    def slow_batch(prompts, responses):
        time.sleep(2.0)
        return [0.0] * len(responses)

    start = time.perf_counter()
    with pytest.raises(
        RewardFailure, match=r"timed out after 0.1 s scoring a batch of 2 responses \(indices \[0, 1\]\)"
    ):
        SafeReward(slow_batch, timeout=0.1).score(convs(2), ["a", "b"])
    assert time.perf_counter() - start < 1.5


def test_fast_reward_within_timeout_returns_scores():
    assert SafeReward(lambda p, r: len(r), timeout=5).score(convs(2), ["ab", "abcd"]) == [2.0, 4.0]


# --- deduplication --------------------------------------------------------------------


def test_identical_responses_are_scored_once():
    seen: list[tuple[str, str]] = []

    def counting(prompt, response):
        seen.append((prompt, response))
        return float(len(response))

    other = [HumanMessage("Another question")]
    same_as_conv = [SystemMessage("Be brief."), HumanMessage("Say hi")]  # equal content, different object
    out = SafeReward(counting).score([CONV, CONV, same_as_conv, CONV, other], ["aa", "bbb", "aa", "aa", "aa"])
    assert out == [2.0, 3.0, 2.0, 2.0, 2.0]
    assert seen == [("Say hi", "aa"), ("Say hi", "bbb"), ("Another question", "aa")]


def test_batched_reward_receives_unique_responses_only():
    reward = ListReward([1.0, 2.0])
    assert SafeReward(reward).score(convs(4), ["x", "y", "y", "x"]) == [1.0, 2.0, 2.0, 1.0]
    assert reward.calls == [["x", "y"]]


# --- as_reward ------------------------------------------------------------------------


def test_as_reward_plain_function_unchanged_and_keywords_wrap():
    def fn(prompt, response):
        return 1.0

    plain = as_reward(fn)
    assert type(plain) is FunctionReward and plain.name == "fn"
    wrapped = as_reward(fn, on_invalid="worst", timeout=2)
    assert isinstance(wrapped, SafeReward)
    assert wrapped.on_invalid == "worst" and wrapped.timeout == 2.0 and wrapped.name == "fn"
    with pytest.raises(TypeError, match="must accept \\(prompt, response\\)"):
        as_reward(lambda x: 0.0)


# --- composition ----------------------------------------------------------------------


def test_weighted_sum_and_operators():
    length = LengthReward(max_words=2)  # 1.0 for <= 2 words, 0.5 for 3 words
    has_hi = RegexReward(r"\bhi\b")
    texts = ["hi there", "hello there friend", "hi hi hi"]
    assert length.score(convs(3), texts) == [1.0, 0.5, 0.5]
    assert has_hi.score(convs(3), texts) == [1.0, 0.0, 1.0]

    explicit = WeightedSum([(length, 2.0), (has_hi, -1.0)])
    assert explicit.score(convs(3), texts) == [1.0, 1.0, 0.0]
    combined = length * 2.0 - has_hi
    assert isinstance(combined, WeightedSum)
    assert [w for _, w in combined.terms] == [2.0, -1.0]
    assert combined.score(convs(3), texts) == [1.0, 1.0, 0.0]
    assert (0.5 * length + has_hi).score(convs(3), texts) == [1.5, 0.25, 1.25]
    assert sum([length, has_hi]).score(convs(3), texts) == [2.0, 0.5, 1.5]
    assert (length + (lambda p, r: 10.0)).score(convs(1), ["hi"]) == [11.0]
    assert (-length).score(convs(1), ["a b c"]) == [-0.5]
    assert combined.name == "2*length + -1*regex('\\\\bhi\\\\b')"


def test_named_weighted_sum_is_kept_as_one_term():
    inner = WeightedSum([(LengthReward(max_words=2), 1.0), (RegexReward("x"), 1.0)], name="quality")
    outer = inner * 3.0 + RegexReward("y")
    assert [r.name for r, _ in outer.terms] == ["quality", "regex('y')"]
    assert outer.score(convs(1), ["x y"]) == [3 * 2.0 + 1.0]


def test_weighted_sum_failures_name_the_term():
    with pytest.raises(RewardFailure, match=r"reward broken \(in 1\*length \+ 1\*broken\) raised RuntimeError: nope"):
        WeightedSum([(LengthReward(max_words=3), 1.0), (FunctionReward(_raise, name="broken"), 1.0)]).score(
            convs(1), ["a"]
        )
    with pytest.raises(RewardFailure, match=r"reward listed .* returned an invalid score nan for sample 1"):
        WeightedSum([(ListReward([0.0, math.nan]), 1.0)]).score(convs(2), ["a", "b"])
    with pytest.raises(ValueError, match="weight of 'length' must be a finite number, got inf"):
        WeightedSum([(LengthReward(max_words=3), math.inf)])
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum([])


def _raise(prompt, response):
    raise RuntimeError("nope")


def test_normalized_standardize_and_clip():
    values = ListReward([1.0, 2.0, 3.0, 6.0])
    z = Normalized(values).score(convs(4), ["a", "b", "c", "d"])
    assert sum(z) == pytest.approx(0.0, abs=1e-12)
    assert sum(v * v for v in z) / 4 == pytest.approx(1.0)
    assert z[0] < z[1] < z[2] < z[3]
    assert z[3] == pytest.approx((6.0 - 3.0) / math.sqrt(3.5))
    assert Normalized(ListReward([4.0, 4.0])).score(convs(2), ["a", "b"]) == [0.0, 0.0]
    assert Normalized(values, "clip", lo=1.5, hi=3.0).score(convs(4), list("abcd")) == [1.5, 2.0, 3.0, 3.0]
    assert Normalized(values, "clip", hi=2.0).score(convs(4), list("abcd")) == [1.0, 2.0, 2.0, 2.0]


def test_normalized_validation():
    with pytest.raises(ValueError, match="mode must be 'standardize' or 'clip', got 'minmax'"):
        Normalized(LengthReward(max_words=1), "minmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lo < hi, got lo=2, hi=1"):
        Normalized(LengthReward(max_words=1), "clip", lo=2, hi=1)
    with pytest.raises(ValueError, match="needs lo and/or hi"):
        Normalized(LengthReward(max_words=1), "clip")
    with pytest.raises(ValueError, match="only apply to mode='clip'"):
        Normalized(LengthReward(max_words=1), lo=0)


# --- the engine -----------------------------------------------------------------------


@pytest.mark.model
def test_rewards_plug_into_the_engine(default_lm, encode):
    from langchain_aisp.engine.aisp import run
    from langchain_aisp.engine.config import AISPParams, SamplingParams

    question = "Name a colour."
    conversation = [HumanMessage(question)]
    reward = SafeReward(LengthReward(min_words=1, max_words=3) + RegexReward(r"(?i)blue|red|green"))
    score = score_fn(reward, [conversation])
    results = run(
        default_lm,
        [encode(question)],
        score,
        AISPParams(method="aisp", num_samples=2, num_iterations=1),
        SamplingParams(max_tokens=8),
        seed=0,
    )
    (result,) = results
    assert len(result.rewards) == 1 and len(result.rewards[0]) == 2
    assert result.rewards[0] == reward.score([conversation] * 2, result.texts[0])
    assert result.reward == max(result.rewards[0])


@pytest.mark.model
def test_engine_error_locates_the_sample_and_chains_the_rewards_own_exception(default_lm, encode):
    from langchain_aisp.engine.aisp import RewardError, run
    from langchain_aisp.engine.config import AISPParams, SamplingParams

    score = score_fn(SafeReward(_raise, name="always_fails"), [[HumanMessage("Hi")]])
    with pytest.raises(RewardError, match="always_fails") as info:
        run(
            default_lm,
            [encode("Hi")],
            score,
            AISPParams(method="aisp", num_samples=2, num_iterations=1),
            SamplingParams(max_tokens=4),
        )
    err = info.value
    assert type(err.__cause__) is RuntimeError  # the reward's own exception, not the wrapper that named the sample
    assert (err.prompt_index, err.iteration, err.response_index) == (0, 0, 0) and err.reward == "always_fails"
    assert f"(prompt 0, iteration 0, response 0: {err.response[:20]!r}"[:-1] in str(err)
