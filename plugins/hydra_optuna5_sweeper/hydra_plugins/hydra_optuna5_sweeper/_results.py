"""What a job returns and how the sweeper reads it: ``JobResult`` (the job contract),
``Constraint`` (a bound on one of its metrics), and ``objective_values`` (the values told to
Optuna, with or without ``objectives``).

A job may return what hydra-optuna-sweeper takes (a float, or a list or tuple of floats, one
per direction), or a ``JobResult`` (or its ``to_dict()``): an objective, the name of its last
stage and its metrics keyed ``<stage>/<metric>``, which ``objectives`` and ``constraints`` name
(``final/<metric>`` is the last stage's).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from hydra_plugins.hydra_optuna5_sweeper._util import fmt


class _Rejected(Exception):
    """A job result the sweeper cannot tell as COMPLETE (missing or non-finite value)."""


@dataclass
class JobResult:
    """What one job returned, in the shape the sweeper reads.

    Args:
        objective: the job's own objective (``objectives: [objective]``), or None.
        final_stage: the stage whose metrics ``final/<metric>`` names.
        metrics: flat ``<stage>/<metric>`` numbers.
        extra: anything else (``mlflow_run_id``: recorded on the trial).
    """

    objective: Optional[float] = None
    final_stage: Optional[str] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, value: Any) -> "JobResult":
        """A job's return value (a JobResult, its dict, or a number) as a JobResult."""
        if isinstance(value, JobResult):
            return value
        if isinstance(value, Mapping):
            extra = {k: v for k, v in value.items()
                     if k not in ("objective", "final_stage", "metrics")}
            objective = value.get("objective")
            try:
                objective = None if objective is None else float(objective)
            except (TypeError, ValueError):
                raise _Rejected(f"objective is {objective!r}, not a number") from None
            return cls(objective, value.get("final_stage"),
                       dict(value.get("metrics") or {}), extra)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(float(value))
        raise _Rejected(f"the job returned {type(value).__name__}, expected a dict with "
                        f"objective, final_stage and metrics")

    def to_dict(self) -> Dict[str, Any]:
        """The plain dict a job returns (it pickles and logs like any dict)."""
        return {"objective": self.objective, "final_stage": self.final_stage,
                "metrics": self.metrics, **self.extra}

    def get(self, name: str) -> float:
        """``objective``, ``final/<metric>`` or ``<stage>/<metric>``, finite."""
        if name == "objective":
            value: Any = self.objective
        else:
            key = name
            if name.startswith("final/"):
                if not self.final_stage:
                    raise _Rejected(f"{name}: the job returned no final_stage")
                key = f"{self.final_stage}/{name[len('final/'):]}"
            if key not in self.metrics:
                raise _Rejected(f"{name}: no metric {key} in the job's result")
            value = self.metrics[key]
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise _Rejected(f"{name} is {value!r}, not a number") from None
        if not math.isfinite(value):
            raise _Rejected(f"{name} is {value}")
        return value

    def final_metrics(self) -> Dict[str, float]:
        """The last stage's metrics as ``final/<metric>`` (finite numbers only)."""
        prefix = f"{self.final_stage}/"
        out = {}
        for key, value in self.metrics.items():
            if key.startswith(prefix) and isinstance(value, (int, float)) and \
                    not isinstance(value, bool) and math.isfinite(value):
                out[f"final/{key[len(prefix):]}"] = value
        return out


@dataclass
class Constraint:
    """``metric <= max`` (or ``metric >= min``), told to Optuna as ``value - max <= 0``."""

    metric: str
    bound: float
    upper: bool = True

    @property
    def key(self) -> str:
        return self.metric if self.upper else f"{self.metric}>="

    def violation(self, value: float) -> float:
        return value - self.bound if self.upper else self.bound - value

    def describe(self, value: float) -> str:
        sign = "<=" if self.upper else ">="
        mark = "ok" if self.violation(value) <= 0 else "OVER" if self.upper else "UNDER"
        return f"{self.metric.split('/')[-1]} {fmt(value)} {sign} {fmt(self.bound)} {mark}"


def objective_values(value: Any, names: Optional[Sequence[str]], n_directions: int
                     ) -> List[float]:
    """The values to tell Optuna for a job's return value.

    Args:
        value: what the job returned.
        names: ``objectives`` (read from a JobResult), or None: the value itself is the
            objective, as in hydra-optuna-sweeper (a float, or one float per direction).
        n_directions: how many directions the study has.

    Raises:
        _Rejected: with the message the trial's ``error`` user attr gets.
    """
    if names is not None:
        result = JobResult.of(value)
        return [result.get(name) for name in names]
    if isinstance(value, (Mapping, JobResult)):
        raise _Rejected(f"the job returned a {type(value).__name__}; set "
                        f"hydra.sweeper.objectives to the values to optimize (e.g. "
                        f"[objective] or [final/<metric>]), or return a float")
    if n_directions == 1:
        try:
            values = [float(value)]
        except (ValueError, TypeError):
            raise _Rejected(f"Return value must be float-castable. Got '{value}'.") from None
    else:
        try:
            values = [float(v) for v in value]
        except (ValueError, TypeError):
            raise _Rejected(f"Return value must be a list or tuple of float-castable values. "
                            f"Got '{value}'.") from None
        if len(values) != n_directions:
            raise _Rejected(f"The number of the values and the number of the objectives are "
                            f"mismatched. Expect {n_directions}, but actually {len(values)}.")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise _Rejected(f"the job returned {bad[0]}")
    return values
