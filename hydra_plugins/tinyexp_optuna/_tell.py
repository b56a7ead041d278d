"""Telling Optuna how each job ended (COMPLETE with its objectives and constraints, PRUNED or
FAIL) and the progress lines (``_TellMixin``, a base class of ``TinyexpOptunaSweeper``).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import logging
import traceback
from typing import Any, Dict, Optional, Sequence

from omegaconf import OmegaConf

from hydra_plugins.tinyexp_optuna._jobs import _error_text, _Rejected, _Result
from hydra_plugins.tinyexp_optuna._settings import _fmt

# The logger of the module this code was split out of, so log lines keep their name.
log = logging.getLogger("hydra_plugins.tinyexp_optuna.optuna_sweeper")


class _TellMixin:
    """Telling methods of ``TinyexpOptunaSweeper`` (uses its settings)."""

    # ------------------------------------------------------------------ telling Optuna

    def _tell_fail(self, study: Any, trial: Any, error: str, job_dir: Optional[str]) -> None:
        from optuna.trial import TrialState

        try:
            trial.set_user_attr("error", error)
            if job_dir:
                trial.set_user_attr("job_dir", job_dir)
        except Exception as err:  # already failed as stale by another process
            log.warning("trial %d: could not record its error: %s", trial.number, err)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    def _tell(self, study: Any, trial: Any, ret: Any) -> str:
        """Tell Optuna how one job ended; print its progress line; return the state's name."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        job_dir = self._job_dir(ret)
        value = ret._return_value  # `.return_value` would re-raise a job's exception
        if ret.status != JobStatus.COMPLETED:
            if type(value).__name__ == "TrialPruned":  # optuna.TrialPruned, maybe unpickled
                try:
                    trial.set_user_attr("pruned", _error_text(value))
                    if job_dir:
                        trial.set_user_attr("job_dir", job_dir)
                except Exception as err:
                    log.warning("trial %d: %s", trial.number, err)
                study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                steps = next(t.intermediate_values for t in study.get_trials(deepcopy=False)
                             if t.number == trial.number)
                at = f"at step {max(steps)} " if steps else ""
                self._progress(study, trial.number, "PRUNED", f"{at}({value})".strip())
                return "PRUNED"
            error = _error_text(value) if isinstance(value, BaseException) else \
                f"job status {ret.status}"
            if isinstance(value, BaseException):
                log.warning("trial %d failed:\n%s", trial.number, "".join(
                    traceback.format_exception(type(value), value, value.__traceback__)))
            self._tell_fail(study, trial, error, job_dir)
            self._progress(study, trial.number, "FAIL", error)
            return "FAIL"
        try:
            result = _Result.of(value)
            values = [result.get(name) for name in self.objective_names]
            measured = [(c, result.get(c.metric)) for c in self.constraints]
        except _Rejected as err:
            self._tell_fail(study, trial, f"ValueError: {err}", job_dir)
            self._progress(study, trial.number, "FAIL", f"ValueError: {err}")
            return "FAIL"
        feasible = all(c.violation(v) <= 0 for c, v in measured)
        attrs: Dict[str, Any] = {"final_stage": result.final_stage, **result.final_metrics()}
        for constraint, measured_value in measured:
            attrs[constraint.metric] = measured_value
            attrs[f"{'max' if constraint.upper else 'min'}/{constraint.metric}"] = constraint.bound
        if self.constraints:
            attrs["feasible"] = feasible
        for key in ("mlflow_run_id", "run_id"):
            if result.extra.get(key):
                attrs["mlflow_run_id"] = str(result.extra[key])
        if job_dir:
            attrs["job_dir"] = job_dir
        try:
            for constraint, measured_value in measured:
                trial.set_constraint(constraint.key, constraint.violation(measured_value))
            for key, attr in attrs.items():
                trial.set_user_attr(key, attr)
        except Exception as err:  # failed meanwhile as stale by another process
            log.warning("trial %d: could not record its results: %s", trial.number, err)
        study.tell(trial, values=values, state=TrialState.COMPLETE, skip_if_finished=True)
        shown = self._values_text(values)
        if measured:
            shown += " | " + ", ".join(c.describe(v) for c, v in measured)
            shown += f" | feasible {'yes' if feasible else 'NO'}"
        self._progress(study, trial.number, "COMPLETE", shown)
        return "COMPLETE"

    def _values_text(self, values: Sequence[float]) -> str:
        return "  ".join(f"{name}={_fmt(value)}"
                         for name, value in zip(self.objective_names, values, strict=True))

    @staticmethod
    def _job_dir(ret: Any) -> Optional[str]:
        hydra_cfg = getattr(ret, "hydra_cfg", None)
        output_dir = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir", default=None) \
            if hydra_cfg is not None else None
        return str(output_dir) if output_dir else getattr(ret, "working_dir", None)

    def _best_line(self, study: Any) -> str:
        """Best feasible trial (single objective) or size of the feasible Pareto front."""
        try:
            if len(self.directions) == 1:
                best = study.best_trial
                return f"best feasible: #{best.number} {self.objective_names[0]}=" \
                       f"{_fmt(best.value)}"
            return f"feasible Pareto front: {len(study.best_trials)} trial(s)"
        except ValueError:
            return "best feasible: none yet"

    def _progress(self, study: Any, number: int, state: str, detail: str) -> None:
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        print(f"[optuna] trial {number} {state}  {detail} | {self._best_line(study)} "
              f"({self._n_done(study)}/{self.n_trials})", flush=True)
