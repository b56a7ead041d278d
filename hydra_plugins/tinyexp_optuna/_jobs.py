"""Helpers around the jobs of a batch: reading what a job returned (``_Result``, ``_Rejected``),
one-line error texts, the heartbeat of RUNNING trials, and splitting a batch into runs of
consecutive trial numbers (files are written by ``tinyexp.files.atomic_write``).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# The logger of the module this code was split out of, so log lines keep their name.
log = logging.getLogger("hydra_plugins.tinyexp_optuna.optuna_sweeper")

# ----------------------------------------------------------------------------- job results


class _Rejected(Exception):
    """A job result the sweeper cannot tell as COMPLETE (missing or non-finite metric)."""


def _error_text(err: BaseException) -> str:
    """``Type: message`` on one line (without the search path Hydra appends to its errors)."""
    message = str(err).split("Config search path:")[0]
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return f"{type(err).__name__}: {message}"[:2000]


@dataclass
class _Result:
    """What one job returned, read through the job contract of tinyexp.pipeline.run."""

    objective: Optional[float]
    final_stage: Optional[str]
    metrics: Dict[str, float]
    extra: Dict[str, Any]

    @classmethod
    def of(cls, value: Any) -> "_Result":
        if isinstance(value, Mapping):
            metrics = dict(value.get("metrics") or {})
            extra = {k: v for k, v in value.items()
                     if k not in ("objective", "final_stage", "metrics")}
            objective = value.get("objective")
            return cls(None if objective is None else float(objective),
                       value.get("final_stage"), metrics, extra)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(float(value), None, {}, {})
        raise _Rejected(f"the job returned {type(value).__name__}, expected a dict with "
                        f"objective, final_stage and metrics")

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


class _Heartbeat:
    """Records the heartbeat of a batch's RUNNING trials while their jobs run.

    Optuna beats only inside ``Study.optimize``; an ask-and-tell loop has to do it itself.
    """

    def __init__(self, storage: Any, trial_ids: Sequence[int], interval: int) -> None:
        self._storage = storage
        self._ids = list(trial_ids)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            for trial_id in self._ids:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception as err:  # a busy database must not end the beat
                    log.warning("heartbeat of trial id %d: %s", trial_id, _error_text(err))
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _consecutive(jobs: List[Tuple[Any, List[str]]]) -> List[List[Tuple[Any, List[str]]]]:
    """Split a batch into runs of consecutive trial numbers (the launcher numbers job folders
    from ``initial_job_idx`` on; another process on the same study can leave gaps)."""
    runs: List[List[Tuple[Any, List[str]]]] = []
    for job in jobs:
        if runs and job[0].number == runs[-1][-1][0].number + 1:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs
