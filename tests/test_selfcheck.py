"""The self-check of a learned proposal (issue 27): the paired gain is unbiased and the level follows it."""

from __future__ import annotations

import itertools
import random

import pytest

from langchain_aisp.engine.selfcheck import (
    DEFAULT_FLOOR,
    SelfCheck,
    TemperatureCheck,
    expected_best_of,
    paired_gain,
    split_gain,
)


@pytest.mark.parametrize("pool", [[0.3, -1.0, 2.5, 0.3, 0.9, 4.0], [1.0, 1.0, 1.0], [2.0, 1.0, 2.0, 0.0]])
def test_expected_best_matches_brute_force(pool):
    for n in range(1, len(pool) + 1):
        subsets = list(itertools.combinations(pool, n))
        assert expected_best_of(pool, n) == pytest.approx(sum(max(s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError, match=r"n must be in \[1, 3\] \(the pool size\), got 4"):
        expected_best_of([1.0, 2.0, 3.0], 4)


def test_paired_gain_is_unbiased_for_two_own_rows_against_six_learned():
    # the same distribution on both sides: exchangeable rows, mean gain 0 whatever the halves' sizes
    rng = random.Random(0)
    same = [paired_gain([rng.gauss(0, 1) for _ in range(2)], [rng.gauss(0, 1) for _ in range(6)]) for _ in range(20000)]
    mean = sum(same) / len(same)
    assert abs(mean) < 0.02  # SE ~ 0.007
    # the naive comparison (best of 6 learned vs best of 2 own) is biased towards the larger half
    naive = [max(rng.gauss(0, 1) for _ in range(6)) - max(rng.gauss(0, 1) for _ in range(2)) for _ in range(5000)]
    assert sum(naive) / len(naive) > 0.5
    # a better learned proposal (shifted up by half a spread) gives a clearly positive gain
    better = [
        paired_gain([rng.gauss(0, 1) for _ in range(2)], [rng.gauss(0.5, 1) for _ in range(6)]) for _ in range(4000)
    ]
    assert sum(better) / len(better) > 0.3


def test_paired_gain_without_a_comparison_is_none():
    assert paired_gain([1.0, 1.0], [1.0] * 6) is None  # no spread
    assert paired_gain([], [1.0, 2.0]) is None
    assert paired_gain([1.0, 2.0, 3.0], [1.0, 2.0]) is None  # fewer learned rows than own ones
    assert paired_gain([0.0], [1.0]) == pytest.approx(1.0 / 0.5**0.5)


def _run(check: SelfCheck, gains, calls: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [check.observe([gains(rng) for _ in range(2)]) for _ in range(calls)]


def test_the_level_rises_while_the_learned_rows_win_and_stays_at_the_floor_without_signal():
    up = _run(SelfCheck(), lambda rng: rng.gauss(0.5, 1.0), 40)
    assert up[-1] == 1.0 and up.index(1.0) < 30
    for seed in range(5):  # no difference: the probe level, with at most brief excursions
        null = _run(SelfCheck(), lambda rng: rng.gauss(0.0, 1.0), 64, seed)
        assert sum(null) / len(null) < 2.5 * DEFAULT_FLOOR
        assert null[-16:].count(DEFAULT_FLOOR) >= 4


def test_the_level_falls_as_soon_as_the_learned_rows_lose():
    check = SelfCheck()
    _run(check, lambda rng: rng.gauss(0.5, 1.0), 40)
    assert check.level == 1.0
    after = _run(check, lambda rng: rng.gauss(-0.5, 1.0), 12, seed=1)
    assert after[-1] == DEFAULT_FLOOR  # a change of reward or traffic: back to the probe level by itself
    assert check.moves[-1] == DEFAULT_FLOOR


def test_state_round_trips_and_bad_settings_are_refused():
    check = SelfCheck(window=8, floor=0.25)
    _run(check, lambda rng: rng.gauss(0.3, 1.0), 10)
    again = SelfCheck.from_json(check.to_json())
    assert again.to_json() == check.to_json() and again.se == check.se
    with pytest.raises(ValueError, match="window must be an integer >= 2"):
        SelfCheck(window=1)
    temperature = TemperatureCheck(window=8)
    _run_t(temperature, -0.5, 12)
    assert TemperatureCheck.from_json(temperature.to_json()).to_json() == temperature.to_json()
    with pytest.raises(ValueError, match=r"temperature probe must be a number in \[0, 2\]"):
        TemperatureCheck(probe=-0.1)
    with pytest.raises(ValueError, match=r"floor must be a number in \[0, 1\]"):
        SelfCheck(floor=1.5)
    assert SelfCheck().observe([]) == DEFAULT_FLOOR  # a call with no comparison moves nothing


def _run_t(check: TemperatureCheck, mu: float, calls: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [check.observe([rng.gauss(mu, 1.0) for _ in range(2)]) for _ in range(calls)]


def test_the_learned_temperature_follows_the_winning_half_within_its_limit():
    check = TemperatureCheck(probe=0.3, step=0.15, limit=0.6)
    assert check.rows(6) == [0.3, -0.3, 0.3, -0.3, 0.3, -0.3] and check.rows(1) == [0.0]
    cooler = _run_t(check, -0.6, 60)  # the cooler half wins: the offset goes down, to the limit and no further
    assert cooler[-1] == -0.6 and min(cooler) == -0.6
    assert check.rows(2) == [pytest.approx(-0.3), pytest.approx(-0.9)]
    hotter = _run_t(check, 0.6, 100, seed=1)  # the reward changes: back up
    assert hotter[-1] >= 0.3
    still = TemperatureCheck()
    assert max(abs(v) for v in _run_t(still, 0.0, 64, seed=2)) <= 0.3  # no difference: it stays near 0


def test_split_gain_compares_equal_halves():
    assert split_gain([1.0, 3.0], [0.0, 1.0], [0.0, 1.0, 1.0, 3.0]) == pytest.approx(2.0 / 1.2583, rel=1e-3)
    assert split_gain([], [1.0], [1.0, 2.0]) is None
    assert split_gain([1.0], [1.0], [1.0, 1.0]) is None  # no spread
