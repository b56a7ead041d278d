"""What a sweep leaves behind: ``optimization_results.yaml`` (hydra-optuna-sweeper's keys, then
ours), ``trials.csv``, Optuna's plots, an MLflow run of the study (``mlflow``), and the
callbacks' hooks (``_OutputsMixin``, a base class of ``OptunaSweeper``).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

from omegaconf import OmegaConf

from hydra_plugins.hydra_optuna5_sweeper._space import SearchSpace
from hydra_plugins.hydra_optuna5_sweeper._util import atomic_write, error_text

log = logging.getLogger("hydra_plugins.hydra_optuna5_sweeper.optuna_sweeper")


def _plain(value: Any) -> Any:
    """A value YAML writes and any reader takes back (NaN and infinities as text)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _write_trials(study: Any, path: Path) -> None:
    """Every trial, one row each: Optuna's ``trials_dataframe`` with pandas, else the same
    main columns written here (pandas is not a dependency of Optuna)."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass
    else:
        study.trials_dataframe().to_csv(path, index=False)
        return
    import csv

    trials = study.get_trials(deepcopy=False)
    n_values = max((len(t.values or ()) for t in trials), default=1)
    value_columns = ["value"] if n_values == 1 else [f"values_{i}" for i in range(n_values)]
    params = sorted({k for t in trials for k in t.params})
    attrs = sorted({k for t in trials for k in t.user_attrs})
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["number", *value_columns, "datetime_start", "datetime_complete",
                         *(f"params_{k}" for k in params),
                         *(f"user_attrs_{k}" for k in attrs), "state"])
        for t in trials:
            values = list(t.values or [])
            writer.writerow([t.number, *(values + [""] * (n_values - len(values))),
                             t.datetime_start or "", t.datetime_complete or "",
                             *(t.params.get(k, "") for k in params),
                             *(t.user_attrs.get(k, "") for k in attrs), t.state.name])


class _OutputsMixin:
    """Results, plots, MLflow and callback methods of ``OptunaSweeper``."""

    def _solution(self, trial: Any, space: SearchSpace) -> Dict[str, Any]:
        return {
            "params": {k: _plain(v) for k, v in trial.params.items()},
            "values": [_plain(v) for v in trial.values],
            "number": trial.number,
            "overrides": space.overrides(trial.params)[len(space.fixed):],
            "user_attrs": {k: _plain(v) for k, v in trial.user_attrs.items()},
        }

    def _results(self, study: Any, space: SearchSpace) -> Tuple[Dict[str, Any], List[Any]]:
        """The content of optimization_results.yaml, and the best trials."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
        results: Dict[str, Any] = {"name": "optuna"}
        best: List[Any] = []
        if len(self.checked.directions) == 1:
            try:
                best = [study.best_trial]
            except ValueError:  # no COMPLETE trial (hydra-optuna-sweeper raises here)
                best = []
            solution = self._solution(best[0], space) if best else None
            results["best_params"] = solution["params"] if solution else None
            results["best_value"] = solution["values"][0] if solution else None
            if best:
                log.info(f"Best parameters: {best[0].params}")
                log.info(f"Best value: {best[0].value}")
        else:
            best = sorted(study.best_trials, key=lambda t: t.number)
            results["solutions"] = [self._solution(t, space) for t in best]
            log.info(f"Number of Pareto solutions: {len(best)}")
            for t in best:
                log.info(f"    Values: {t.values}, Params: {t.params}")
        results.update({
            "study_name": self.study_name,
            "storage": self.storage_used,
            "directions": self.checked.directions,
            "objectives": self.checked.objective_names,
            "constraints": self.settings.constraints or [],
            "n_trials": self.n_trials,
            "trials": {k: v for k, v in counts.items() if v},
            "feasible_trials": len(feasible),
        })
        if len(self.checked.directions) == 1:
            results["best_feasible"] = solution
        return results, best

    def _finish(self, study: Any, space: SearchSpace) -> None:
        """Write the results files and plots, print the summary, run the end hooks."""
        results, best = self._results(study, space)
        files = [atomic_write(self.sweep_dir / "optimization_results.yaml",
                              OmegaConf.to_yaml(OmegaConf.create(results)))]
        files.append(atomic_write(self.sweep_dir / "trials.csv",
                                  lambda tmp: _write_trials(study, tmp)))
        if self.settings.plots:
            files += self._plots(study, results["trials"].get("complete", 0))

        print(f"[optuna] {self.study_name}: {results['trials']}, {results['feasible_trials']} "
              f"feasible", flush=True)
        if len(self.checked.directions) == 1:
            print(f"[optuna] {self._best_line(study)}" + (
                f"  {' '.join(space.overrides(best[0].params)[len(space.fixed):])}"
                if best else ""), flush=True)
        else:
            for trial in best:
                print(f"[optuna] Pareto #{trial.number}: {self._values_text(trial.values)}  "
                      + " ".join(space.overrides(trial.params)[len(space.fixed):]), flush=True)
        print(f"[optuna] results: {files[0]}", flush=True)
        self._mlflow_run(results, files)
        self._hooks("on_study_end", study, results, files)

    def _hooks(self, name: str, study: Any, *args: Any) -> None:
        """Call ``name`` on every callback that has it; a failing hook only costs a warning
        (the search itself is done, or not started, and its study is saved)."""
        for callback in self.checked.callbacks:
            hook = getattr(callback, name, None)
            if hook is None:
                continue
            try:
                hook(self, study, *args)
            except Exception as err:
                log.warning("%s.%s: %s", type(callback).__name__, name, error_text(err))

    def _plots(self, study: Any, n_complete: int) -> List[Path]:
        """Optuna's matplotlib plots as PNG; a plot that fails only costs a warning."""
        if n_complete == 0:
            return []
        try:
            import matplotlib

            matplotlib.use("Agg", force=True)
            import matplotlib.pyplot as plt
            from optuna.visualization import matplotlib as ovm
        except Exception as err:
            log.warning("no plots: %s", error_text(err))
            return []

        names = self.checked.value_names
        jobs: List[Tuple[str, Any]] = []
        multi = len(names) > 1
        for i, name in enumerate(names):
            suffix = f"_{name.replace('/', '_')}" if multi else ""
            target = (lambda t, i=i: t.values[i]) if multi else None
            jobs.append((f"optimization_history{suffix}.png", lambda target=target, name=name:
                         ovm.plot_optimization_history(study, target=target, target_name=name)))
            if n_complete >= 2:
                jobs.append((f"param_importances{suffix}.png", lambda target=target, name=name:
                             ovm.plot_param_importances(study, target=target, target_name=name)))
        if len(names) in (2, 3):
            jobs.append(("pareto_front.png", lambda: ovm.plot_pareto_front(
                study, target_names=names)))
        saved = []
        for filename, draw in jobs:
            path = self.sweep_dir / filename
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna's matplotlib API is experimental
                    ax = draw()
                figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                figure.tight_layout()
                atomic_write(path, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=110))
                saved.append(path)
            except Exception as err:
                log.warning("plot %s skipped: %s", filename, error_text(err))
            finally:
                plt.close("all")
        return saved

    def _mlflow_run(self, results: Dict[str, Any], files: List[Path]) -> None:
        """``mlflow: {...}``: one MLflow run of the study, with its settings as params, its
        trial counts and best value as metrics, and the files (the best params are in
        optimization_results.yaml); only when mlflow is importable."""
        node = self.checked.mlflow
        if node is None:
            return
        try:
            import mlflow
        except ImportError:
            log.warning("hydra.sweeper.mlflow is set but mlflow is not installed: no run")
            return
        s = self.settings
        params = {"sampler": str((s.sampler or {}).get("_target_")),
                  "pruner": str((s.pruner or {}).get("_target_")),
                  "directions": ",".join(self.checked.directions),
                  "objectives": ",".join(self.checked.objective_names or []) or "returned",
                  "n_trials": str(s.n_trials), "study_name": self.study_name,
                  "storage": str(self.storage_used)}
        metrics = {f"n_{k}": float(v) for k, v in results["trials"].items()}
        if results.get("best_value") is not None:
            metrics["best_value"] = float(results["best_value"])
        try:
            client = mlflow.MlflowClient(tracking_uri=node.get("tracking_uri"))
            name = node.get("experiment_name") or "optuna"
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else \
                client.create_experiment(name)
            run = client.create_run(experiment_id, run_name=node.get("run_name") or
                                    f"optuna {self.study_name}")
            for key, value in params.items():
                client.log_param(run.info.run_id, key, value[:6000])
            for key, value in metrics.items():
                client.log_metric(run.info.run_id, key, value)
            for path in files:
                client.log_artifact(run.info.run_id, str(path))
            client.set_terminated(run.info.run_id)
        except Exception as err:  # the search itself is done and saved
            log.warning("MLflow run of the study: %s", error_text(err))
