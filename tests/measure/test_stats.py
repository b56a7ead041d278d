"""Statistics over seeds: the t interval by hand, and the flat dict a repeated run logs."""

from __future__ import annotations

import math

import pytest

from tinyexp.measure.stats import aggregate, ci95_halfwidth, mean_ci, note, per_seed, repeats

F1 = [0.696, 0.855, 0.659, 0.586, 0.826]  # the float baseline over seeds 0-4 (the issue)
T_DF4 = 2.7764451051977987  # Student t, 97.5% quantile, 4 degrees of freedom


def _by_hand(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, sd, T_DF4 * sd / math.sqrt(n)


def test_interval_is_t_times_the_standard_error():
    mean, sd, half = _by_hand(F1)
    assert mean == pytest.approx(0.7244)
    assert ci95_halfwidth(F1) == pytest.approx(half, rel=1e-12)
    assert half == pytest.approx(0.1410, abs=1e-4)  # 0.7244 ± 0.141: one seed says little


@pytest.mark.parametrize("values", [[], [0.7], [0.7, math.nan], [None, 0.7, math.inf]])
def test_fewer_than_two_finite_values_have_no_interval(values):
    assert ci95_halfwidth(values) is None


def test_identical_values_have_a_zero_interval():
    assert ci95_halfwidth([12648.0] * 3) == 0.0


def test_aggregate_gives_mean_spread_and_the_per_seed_values():
    runs = {s: {"baseline/f1": f, "baseline/params": 12648.0, "pruned/f1_delta": f - 0.9}
            for s, f in enumerate(F1)}
    out = aggregate(runs)
    mean, sd, half = _by_hand(F1)
    assert out["baseline/f1"] == pytest.approx(mean)
    assert out["baseline/f1_sd"] == pytest.approx(sd)
    assert out["baseline/f1_ci95"] == pytest.approx(half)
    assert out["pruned/f1_delta_ci95"] == pytest.approx(half)  # a shift keeps the spread
    assert (out["baseline/params"], out["baseline/params_sd"], out["baseline/params_ci95"]) \
        == (12648.0, 0.0, 0.0)
    assert out["repeats"] == 5
    assert [out[f"seeds/{s}/baseline/f1"] for s in range(5)] == F1
    assert not any(k.endswith("_n") for k in out)  # every seed has every key
    assert per_seed(out) == runs
    assert mean_ci(out, "baseline/f1") == (pytest.approx(mean), pytest.approx(half))


def test_nan_and_missing_values_are_left_out_and_counted():
    out = aggregate({0: {"a": 1.0, "b": math.nan, "c": None},
                     1: {"a": 3.0, "b": 2.0},
                     2: {"a": 5.0, "b": 4.0, "c": None, "name": "text"}})
    assert out["a"] == 3.0 and "a_n" not in out
    assert out["b"] == 3.0 and out["b_n"] == 2
    assert out["b_ci95"] == pytest.approx(ci95_halfwidth([2.0, 4.0]))
    assert math.isnan(out["c"]) and out["c_n"] == 0 and "c_ci95" not in out
    assert mean_ci(out, "c") == (None, None)
    assert math.isnan(out["seeds/0/b"]) and math.isnan(out["seeds/0/c"])
    assert "seeds/1/c" not in out and "name" not in out and "seeds/2/name" not in out


def test_a_single_seed_has_no_spread():
    out = aggregate({7: {"baseline/f1": 0.7}})
    assert out == {"baseline/f1": 0.7, "repeats": 1, "seeds/7/baseline/f1": 0.7}
    assert mean_ci(out, "baseline/f1") == (0.7, None)


def test_keys_that_are_spreads_already_get_none_of_their_own():
    out = aggregate({0: {"x_sd": 1.0, "x_ci95": 2.0}, 1: {"x_sd": 3.0, "x_ci95": 4.0}})
    assert out["x_sd"] == 2.0 and out["x_ci95"] == 3.0
    assert not {"x_sd_sd", "x_sd_ci95", "x_ci95_sd", "x_ci95_ci95"} & set(out)


def test_repeats_and_note():
    assert repeats({"repeats": 5, "a": 1.0}) == 5 and repeats({"a": 1.0}) == 1
    assert note(5) == "mean ± 95% CI over 5 seeds (t-distribution)"
