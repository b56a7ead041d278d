"""Telling Optuna how each job ended (COMPLETE with its values and constraints, PRUNED or
FAIL) and the progress lines (``_TellMixin``, a base class of ``OptunaSweeper``).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import logging
import traceback
from typing import Any, Dict, Optional, Sequence

from omegaconf import OmegaConf

from hydra_plugins.hydra_optuna5_sweeper._results import JobResult, _Rejected, objective_values
from hydra_plugins.hydra_optuna5_sweeper._util import error_text, fmt

log = logging.getLogger("hydra_plugins.hydra_optuna5_sweeper.optuna_sweeper")


def tell(study: Any, trial: Any, **kwargs: Any) -> None:
    """``study.tell`` that finished trials skip, and that survives the grid sampler's
    ``study.stop()`` (meant for ``optimize``; the trial is told before it raises)."""
    try:
        study.tell(trial, skip_if_finished=True, **kwargs)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


class _TellMixin:
    """Telling methods of ``OptunaSweeper`` (uses its settings)."""

    def _tell_fail(self, study: Any, trial: Any, error: str, job_dir: Optional[str]) -> None:
        from optuna.trial import TrialState

        try:
            trial.set_user_attr("error", error)
            if job_dir:
                trial.set_user_attr("job_dir", job_dir)
        except Exception as err:  # already failed as stale by another process
            log.warning("trial %d: could not record its error: %s", trial.number, err)
        tell(study, trial, state=TrialState.FAIL)

    def _tell(self, study: Any, trial: Any, ret: Any) -> Optional[BaseException]:
        """Tell Optuna how one job ended and print its progress line.

        Returns:
            None if the trial is COMPLETE or PRUNED, else the error it failed with.
        """
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        job_dir = self._job_dir(ret)
        value = ret._return_value  # `.return_value` would re-raise a job's exception
        if ret.status != JobStatus.COMPLETED:
            if type(value).__name__ == "TrialPruned":  # optuna.TrialPruned, maybe unpickled
                try:
                    trial.set_user_attr("pruned", error_text(value))
                    if job_dir:
                        trial.set_user_attr("job_dir", job_dir)
                except Exception as err:
                    log.warning("trial %d: %s", trial.number, err)
                tell(study, trial, state=TrialState.PRUNED)
                steps = next(t.intermediate_values for t in study.get_trials(deepcopy=False)
                             if t.number == trial.number)
                at = f"at step {max(steps)} " if steps else ""
                self._progress(study, trial.number, "PRUNED", f"{at}({value})".strip())
                return None
            err = value if isinstance(value, BaseException) else \
                RuntimeError(f"job status {ret.status}")
            if isinstance(value, BaseException):
                log.warning("trial %d failed:\n%s", trial.number, "".join(
                    traceback.format_exception(type(value), value, value.__traceback__)))
            self._tell_fail(study, trial, error_text(err), job_dir)
            self._progress(study, trial.number, "FAIL", error_text(err))
            return err
        checked = self.checked
        try:
            values = objective_values(value, checked.objective_names, len(checked.directions))
            result = JobResult.of(value) if checked.objective_names is not None else None
            measured = [(c, result.get(c.metric)) for c in checked.constraints]
        except _Rejected as rejected:
            err = ValueError(str(rejected))
            self._tell_fail(study, trial, error_text(err), job_dir)
            self._progress(study, trial.number, "FAIL", error_text(err))
            return err
        feasible = all(c.violation(v) <= 0 for c, v in measured)
        attrs: Dict[str, Any] = {}
        if result is not None:
            attrs = {"final_stage": result.final_stage, **result.final_metrics()}
            for constraint, measured_value in measured:
                attrs[constraint.metric] = measured_value
                attrs[f"{'max' if constraint.upper else 'min'}/{constraint.metric}"] = \
                    constraint.bound
            if checked.constraints:
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
        tell(study, trial, values=values, state=TrialState.COMPLETE)
        shown = self._values_text(values)
        if measured:
            shown += " | " + ", ".join(c.describe(v) for c, v in measured)
            shown += f" | feasible {'yes' if feasible else 'NO'}"
        self._progress(study, trial.number, "COMPLETE", shown)
        return None

    def _values_text(self, values: Sequence[float]) -> str:
        return "  ".join(f"{name}={fmt(value)}"
                         for name, value in zip(self.checked.value_names, values, strict=True))

    @staticmethod
    def _job_dir(ret: Any) -> Optional[str]:
        hydra_cfg = getattr(ret, "hydra_cfg", None)
        output_dir = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir", default=None) \
            if hydra_cfg is not None else None
        return str(output_dir) if output_dir else getattr(ret, "working_dir", None)

    def _best_line(self, study: Any) -> str:
        """Best feasible trial (single objective) or size of the feasible Pareto front."""
        try:
            if len(self.checked.directions) == 1:
                best = study.best_trial
                return f"best feasible: #{best.number} {self.checked.value_names[0]}=" \
                       f"{fmt(best.value)}"
            return f"feasible Pareto front: {len(study.best_trials)} trial(s)"
        except ValueError:
            return "best feasible: none yet"

    def _progress(self, study: Any, number: int, state: str, detail: str) -> None:
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        print(f"[optuna] trial {number} {state}  {detail} | {self._best_line(study)} "
              f"({self._progress_count(study)})", flush=True)
