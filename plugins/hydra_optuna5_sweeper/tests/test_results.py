"""The job contract: ``JobResult`` and the values told to Optuna for what a job returned."""

from __future__ import annotations

import math

import pytest

from hydra_plugins.hydra_optuna5_sweeper import JobResult
from hydra_plugins.hydra_optuna5_sweeper._results import Constraint, _Rejected, objective_values

RESULT = JobResult(objective=0.5, final_stage="quantized",
                   metrics={"quantized/f1": 0.8, "quantized/flash_bytes": 900,
                            "baseline/f1": 0.9, "quantized/bad": math.nan},
                   extra={"mlflow_run_id": "abc"})


def test_a_job_result_round_trips_through_its_dict():
    assert JobResult.of(RESULT.to_dict()) == RESULT
    assert JobResult.of(RESULT) is RESULT
    assert JobResult.of(3) == JobResult(objective=3.0)
    assert RESULT.to_dict()["mlflow_run_id"] == "abc"


@pytest.mark.parametrize(("name", "value"), [
    ("objective", 0.5), ("final/f1", 0.8), ("baseline/f1", 0.9), ("final/flash_bytes", 900.0),
])
def test_get_reads_objective_final_and_stage_metrics(name, value):
    assert RESULT.get(name) == value


@pytest.mark.parametrize(("result", "name", "text"), [
    (RESULT, "final/ram_bytes", "no metric quantized/ram_bytes"),
    (RESULT, "final/bad", "final/bad is nan"),
    (JobResult(metrics={"a/b": 1}), "final/b", "no final_stage"),
    (JobResult(), "objective", "None, not a number"),
])
def test_get_rejects_what_cannot_be_told(result, name, text):
    with pytest.raises(_Rejected, match=text):
        result.get(name)


def test_final_metrics_are_the_last_stages_finite_numbers():
    assert RESULT.final_metrics() == {"final/f1": 0.8, "final/flash_bytes": 900}


@pytest.mark.parametrize(("value", "names", "n", "expected"), [
    (1.5, None, 1, [1.5]),
    ("2", None, 1, [2.0]),  # float-castable, as hydra-optuna-sweeper takes it
    ((1, 2), None, 2, [1.0, 2.0]),
    ([1, 2], None, 2, [1.0, 2.0]),
    (RESULT.to_dict(), ["final/f1", "final/flash_bytes"], 2, [0.8, 900.0]),
    (RESULT, ["objective"], 1, [0.5]),
    (0.25, ["objective"], 1, [0.25]),
])
def test_objective_values(value, names, n, expected):
    assert objective_values(value, names, n) == expected


@pytest.mark.parametrize(("value", "names", "n", "text"), [
    ("abc", None, 1, "Return value must be float-castable. Got 'abc'."),
    (None, None, 1, "Return value must be float-castable. Got 'None'."),
    (1.0, None, 2, "must be a list or tuple of float-castable values. Got '1.0'."),
    ((1, 2, 3), None, 2, "mismatched. Expect 2, but actually 3."),
    ({"objective": 1}, None, 1, "set hydra.sweeper.objectives"),
    (RESULT, None, 1, "set hydra.sweeper.objectives"),
    (math.inf, None, 1, "returned inf"),
    ("x", ["objective"], 1, "the job returned str"),
])
def test_objective_values_reject(value, names, n, text):
    with pytest.raises(_Rejected) as caught:
        objective_values(value, names, n)
    assert text in str(caught.value)


def test_a_constraint_is_told_as_its_violation():
    upper, lower = Constraint("final/flash_bytes", 1000), Constraint("final/f1", 0.5, upper=False)
    assert upper.violation(900) == -100 and lower.violation(0.4) == pytest.approx(0.1)
    assert upper.key == "final/flash_bytes" and lower.key == "final/f1>="
    assert upper.describe(1200) == "flash_bytes 1,200 <= 1,000 OVER"
    assert lower.describe(0.6) == "f1 0.6 >= 0.5 ok"
