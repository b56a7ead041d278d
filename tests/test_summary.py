"""The console table of one run (tinyexp.summary): the change columns print the logged
``*_delta`` and ``*_reduction_pct`` metrics, with the sign of tinyexp.measure.changes."""

from __future__ import annotations

import math
import re

import pytest

from tinyexp.measure import changes, stats
from tinyexp.summary import fmt_mean_ci, fmt_number, fmt_reduction, stage_change, stage_table

TASK = ("accuracy", "f1")
COSTS = ("params", "macs", "size_bytes", "weight_bytes", "flash_bytes", "ram_bytes",
         "latency_ms", "latency_p90_ms")


def _metrics() -> dict[str, float]:
    """A classification run as the pipeline reports it: pruned smaller and faster, quantized
    smaller still but slower than the float baseline."""
    base = {"accuracy": 0.9833, "f1": 0.9832, "params": 13754, "macs": 91776,
            "size_bytes": 55798, "weight_bytes": 54824.0, "flash_bytes": 55798,
            "ram_bytes": 5120, "latency_ms": 0.00684, "latency_p90_ms": 0.00694}
    stages = {"pruned": {"accuracy": 0.9778, "f1": 0.9777, "params": 3682, "macs": 25408,
                         "size_bytes": 15598, "weight_bytes": 14632.0, "flash_bytes": 15598,
                         "ram_bytes": 2560, "latency_ms": 0.00662, "latency_p90_ms": 0.00674},
              "quantized": {"accuracy": 0.975, "f1": 0.9749, "params": 3682, "macs": 25408,
                            "size_bytes": 5564, "weight_bytes": 4211.0, "flash_bytes": 5564,
                            "ram_bytes": 640, "latency_ms": 0.009615,
                            "latency_p90_ms": 0.009696}}
    metrics = {f"baseline/{k}": v for k, v in base.items()}
    metrics["baseline/epochs"] = 56
    for stage, values in stages.items():
        metrics.update({f"{stage}/{k}": v for k, v in values.items()})
        metrics.update(changes.stage_changes(metrics, stage, TASK))
    metrics["layers/conv1/r50/f1"] = 0.5  # an analysis, not a stage
    return metrics


def _columns(table: str) -> dict[str, dict[str, str]]:
    """``{column header: {row name: cell}}`` of a printed table."""
    lines = [line for line in table.splitlines()[1:] if not set(line) <= {"-"}]
    header, *rows = (re.split(r"\s{2,}", line.strip()) for line in lines)
    return {h: {row[0]: row[i] for row in rows} for i, h in enumerate(header)}


def _signed(cell: str) -> float:
    """``-0.005556`` -> -0.005556; ``73.2% smaller`` -> 73.2; ``40.6% slower`` -> -40.6."""
    match = re.fullmatch(r"([\d.,]+)% (smaller|faster|larger|slower)", cell)
    if match is None:
        return float(cell.replace(",", ""))
    value = float(match[1].replace(",", ""))
    return value if match[2] in ("smaller", "faster") else -value


def test_change_columns_print_the_logged_delta_and_reduction_metrics():
    metrics = _metrics()
    columns = _columns(stage_table(metrics, "title"))
    assert list(columns) == ["metric", "baseline", "pruned", "quantized",
                             "pruned: delta / reduction", "quantized: delta / reduction"]
    for stage in ("pruned", "quantized"):
        cells = columns[f"{stage}: delta / reduction"]
        assert set(cells) == {*TASK, *COSTS}
        for name in TASK:
            assert _signed(cells[name]) == pytest.approx(metrics[f"{stage}/{name}_delta"],
                                                         rel=1e-3)
        for name in COSTS:
            key = f"{stage}/{changes.REDUCTIONS[name]}" if name in changes.REDUCTIONS else None
            expected = metrics[key] if key else changes.reduction_pct(
                metrics[f"baseline/{name}"], metrics[f"{stage}/{name}"])
            assert _signed(cells[name]) == pytest.approx(expected, abs=0.05), (stage, name)
    # positive = smaller: pruning cut the parameters, quantization slowed this model down
    assert columns["pruned: delta / reduction"]["params"] == "73.2% smaller"
    assert metrics["pruned/param_reduction_pct"] == pytest.approx(73.2, abs=0.05)
    assert columns["quantized: delta / reduction"]["latency_ms"] == "40.6% slower"
    assert metrics["quantized/latency_reduction_pct"] == pytest.approx(-40.6, abs=0.05)
    assert columns["pruned: delta / reduction"]["f1"] == "-0.0055"


def test_the_table_prints_the_metric_it_is_given_not_its_own_computation():
    metrics = _metrics()
    metrics["pruned/param_reduction_pct"] = 12.5
    metrics["pruned/f1_delta"] = 0.25
    cells = _columns(stage_table(metrics))["pruned: delta / reduction"]
    assert cells["params"] == "12.5% smaller" and cells["f1"] == "+0.25"


def test_missing_or_nan_values_print_a_dash():
    metrics = _metrics()
    metrics["pruned/f1_delta"] = math.nan
    del metrics["baseline/ram_bytes"]
    cells = _columns(stage_table(metrics))["pruned: delta / reduction"]
    assert cells["f1"] == "-" and cells["ram_bytes"] == "-"


def test_a_baseline_alone_has_no_change_column():
    metrics = {k: v for k, v in _metrics().items() if k.startswith("baseline/")}
    assert list(_columns(stage_table(metrics, "t"))) == ["metric", "baseline"]


@pytest.mark.parametrize(("value", "kwargs", "text"), [
    (12648.0, {}, "12,648"),
    (0.98327, {}, "0.9833"),
    (-0.0055556, {"signed": True}, "-0.005556"),
    (0.1, {"signed": True}, "+0.1"),
    (-0.0, {"signed": True}, "0"),
    (0.0, {"signed": True, "decimals": 1}, "0.0"),
    (1234567.0, {"signed": True}, "+1,234,567"),
    (67.74, {"decimals": 1}, "67.7"),
    (1234.4, {"signed": True, "decimals": 0}, "+1,234"),
    (17409.4, {}, "17,409"),  # a mean over seeds, not 1.741e+04
    (None, {}, "-"),
    (math.inf, {"signed": True}, "-"),
])
def test_fmt_number(value, kwargs, text):
    assert fmt_number(value, **kwargs) == text


@pytest.mark.parametrize(("pct", "cost", "text"), [
    (67.74, "params", "67.7% smaller"),
    (-12.0, "ram_bytes", "12.0% larger"),
    (3.2, "latency_ms", "3.2% faster"),
    (-40.56, "latency_p90_ms", "40.6% slower"),
    (0.0, "macs", "0.0%"),
    (None, "macs", "-"),
])
def test_fmt_reduction(pct, cost, text):
    assert fmt_reduction(pct, cost) == text


F1 = (0.696, 0.855, 0.659, 0.586, 0.826)  # the float baseline over seeds 0-4


def _repeated() -> dict[str, float]:
    """``repeats=5``: F1 and latency vary over the seeds; sizes and parameters do not."""
    per_seed = {}
    for seed, f1 in enumerate(F1):
        metrics = {k: v for k, v in _metrics().items() if not k.startswith("layers/")}
        metrics.update({"baseline/f1": f1, "pruned/f1": f1 - 0.1 - 0.01 * seed,
                        "baseline/latency_ms": 0.00684 + 0.0002 * seed,
                        "baseline/latency_p90_ms": 0.00694 + 0.0003 * seed})
        for stage in ("pruned", "quantized"):
            metrics.update(changes.stage_changes(metrics, stage, TASK))
        per_seed[seed] = metrics
    return stats.aggregate(per_seed)


def test_a_repeated_run_prints_mean_and_interval_and_says_so():
    metrics = _repeated()
    table = stage_table(metrics, "title")
    body, footer = table.rsplit("\n", 1)
    assert footer == "mean ± 95% CI over 5 seeds (t-distribution)"
    columns = _columns(body)
    assert list(columns) == ["metric", "baseline", "pruned", "quantized",
                             "pruned: delta / reduction", "quantized: delta / reduction"]
    mean, ci = stats.mean_ci(metrics, "baseline/f1")
    assert columns["baseline"]["f1"] == f"{fmt_number(mean)} ± {fmt_number(ci)}" \
        == "0.7244 ± 0.141"
    # each seed against its own baseline: the change varies less than the metric
    delta, delta_ci = stats.mean_ci(metrics, "pruned/f1_delta")
    assert columns["pruned: delta / reduction"]["f1"] == \
        f"{fmt_number(delta, signed=True)} ± {fmt_number(delta_ci)}" == "-0.12 ± 0.01963"
    # the same in every seed: the number alone, as in a single run
    assert columns["baseline"]["params"] == "13,754"
    assert columns["pruned: delta / reduction"]["params"] == "73.2% smaller"
    # a reduction the run did not log (p90) still gets its interval, from the seeds
    p90, p90_ci = stage_change(metrics, "pruned", "latency_p90_ms")
    assert "pruned/latency_p90_ms_reduction_pct" not in metrics and p90_ci > 0
    assert columns["pruned: delta / reduction"]["latency_p90_ms"] == \
        f"{p90:.1f} ± {p90_ci:.1f}% faster"
    assert re.fullmatch(r"\d+\.\d ± \d+\.\d% faster",
                        columns["pruned: delta / reduction"]["latency_ms"])


def test_a_single_run_prints_no_interval():
    table = stage_table(_metrics(), "title")
    assert "±" not in table and "seeds" not in table


@pytest.mark.parametrize(("value", "ci", "kwargs", "text"), [
    (0.72441, 0.141049, {}, "0.7244 ± 0.141"),
    (-0.12, 0.019633, {"signed": True}, "-0.12 ± 0.01963"),
    (12648.0, 0.0, {}, "12,648"),
    (0.5, None, {}, "0.5"),
    (None, 0.1, {}, "-"),
    (17409.4, 1.2, {}, "17,409 ± 1.2"),
])
def test_fmt_mean_ci(value, ci, kwargs, text):
    assert fmt_mean_ci(value, ci, **kwargs) == text


@pytest.mark.parametrize(("pct", "ci", "text"), [
    (25.74, 2.13, "25.7 ± 2.1% faster"),
    (-12.0, 3.0, "12.0 ± 3.0% slower"),
    (67.7, 0.0, "67.7% faster"),
    (67.7, 0.04, "67.7% faster"),  # rounds to 0.0: left out
])
def test_fmt_reduction_with_interval(pct, ci, text):
    assert fmt_reduction(pct, "latency_ms", ci=ci) == text
