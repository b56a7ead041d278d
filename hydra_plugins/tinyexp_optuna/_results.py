"""The results of a sweep: ``optimization_results.yaml``, ``trials.csv``, Optuna's plots, and
the study's MLflow parent run (``_ResultsMixin``, a base class of ``TinyexpOptunaSweeper``).
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

from hydra_plugins.tinyexp_optuna._jobs import _error_text
from hydra_plugins.tinyexp_optuna._space import SearchSpace
from tinyexp.files import atomic_write

# The logger of the module this code was split out of, so log lines keep their name.
log = logging.getLogger("hydra_plugins.tinyexp_optuna.optuna_sweeper")


class _ResultsMixin:
    """Results and MLflow methods of ``TinyexpOptunaSweeper`` (uses its settings)."""

    # ------------------------------------------------------------------ results

    def _solution(self, trial: Any, space: SearchSpace) -> Dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            return value

        return {
            "number": trial.number,
            "values": dict(zip(self.objective_names, map(plain, trial.values), strict=True)),
            "params": {k: plain(v) for k, v in trial.params.items()},
            "overrides": space.overrides(trial.params)[len(space.fixed):],
            "user_attrs": {k: plain(v) for k, v in trial.user_attrs.items()},
        }

    def _finish(self, study: Any, study_name: str, space: SearchSpace) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
        results: Dict[str, Any] = {
            "name": "optuna",
            "study_name": study_name,
            "storage": self.storage_used,
            "directions": self.directions,
            "objectives": self.objective_names,
            "constraints": self.constraints_cfg or [],
            "n_trials": self.n_trials,
            "trials": {k: v for k, v in counts.items() if v},
            "feasible_trials": len(feasible),
        }
        best: List[Any] = []
        if len(self.directions) == 1:
            try:
                best = [study.best_trial]
            except ValueError:
                best = []
            solution = self._solution(best[0], space) if best else None
            results["best_feasible"] = solution
            # The keys hydra-optuna-sweeper writes, for tools that read them.
            results["best_params"] = solution["params"] if solution else None
            results["best_value"] = solution["values"][self.objective_names[0]] \
                if solution else None
        else:
            best = sorted(study.best_trials, key=lambda t: t.number)
            results["solutions"] = [self._solution(t, space) for t in best]
        text = OmegaConf.to_yaml(OmegaConf.create(results))
        atomic_write(self.sweep_dir / "optimization_results.yaml", text)
        files = [self.sweep_dir / "optimization_results.yaml"]

        csv = self.sweep_dir / "trials.csv"
        atomic_write(csv, lambda tmp: study.trials_dataframe().to_csv(tmp, index=False))
        files.append(csv)
        if self.plots:
            files += self._plots(study, len(complete))

        print(f"[optuna] {study_name}: {results['trials']}, {len(feasible)} feasible", flush=True)
        if len(self.directions) == 1:
            print(f"[optuna] {self._best_line(study)}" + (
                f"  {' '.join(space.overrides(best[0].params)[len(space.fixed):])}"
                if best else ""), flush=True)
        else:
            for trial in best:
                print(f"[optuna] Pareto #{trial.number}: {self._values_text(trial.values)}  "
                      + " ".join(space.overrides(trial.params)[len(space.fixed):]), flush=True)
        print(f"[optuna] results: {self.sweep_dir / 'optimization_results.yaml'}", flush=True)
        self._mlflow_results(results, best, files, len(feasible))

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
            log.warning("no plots: %s", _error_text(err))
            return []

        def slug(name: str) -> str:
            return name.replace("/", "_")

        jobs: List[Tuple[str, Any]] = []
        multi = len(self.directions) > 1
        for i, name in enumerate(self.objective_names):
            suffix = f"_{slug(name)}" if multi else ""
            target = (lambda t, i=i: t.values[i]) if multi else None
            jobs.append((f"optimization_history{suffix}.png", lambda target=target, name=name:
                         ovm.plot_optimization_history(study, target=target, target_name=name)))
            if n_complete >= 2:
                jobs.append((f"param_importances{suffix}.png", lambda target=target, name=name:
                             ovm.plot_param_importances(study, target=target, target_name=name)))
        if len(self.directions) in (2, 3):
            jobs.append(("pareto_front.png", lambda: ovm.plot_pareto_front(
                study, target_names=self.objective_names)))
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
                log.warning("plot %s skipped: %s", filename, _error_text(err))
            finally:
                plt.close("all")
        return saved

    # ------------------------------------------------------------------ MLflow

    def _tracking(self) -> Any:
        """tinyexp.tracking when the config logs to MLflow, else None."""
        if OmegaConf.select(self.config, "logger.name", default=None) != "mlflow":
            return None
        try:
            from tinyexp import tracking
        except ImportError as err:
            log.warning("no MLflow logging: %s", err)
            return None
        return tracking

    def _mlflow_parent(self, study: Any, study_name: str) -> None:
        """Create the study's parent run up front (its jobs find it through the sweep folder)."""
        tracking = self._tracking()
        if tracking is None:
            return
        try:
            self.parent_run_id = tracking.sweep_parent_run(self.config, self.sweep_dir,
                                                           f"optuna {study_name}")
        except Exception as err:
            log.warning("MLflow parent run: %s", _error_text(err))
            return
        if self.parent_run_id:
            study.set_user_attr("tinyexp.mlflow_parent_run_id", self.parent_run_id)

    def _mlflow_results(self, results: Dict[str, Any], best: List[Any], files: List[Path],
                        n_feasible: int) -> None:
        tracking = self._tracking()
        if tracking is None or not self.parent_run_id:
            return
        metrics: Dict[str, float] = {f"optuna/n_{k}": float(v)
                                     for k, v in results["trials"].items()}
        metrics["optuna/n_feasible"] = float(n_feasible)
        tags = {"tinyexp.optuna.study": results["study_name"],
                "tinyexp.optuna.storage": results["storage"]}
        if len(self.directions) == 1 and best:
            trial = best[0]
            metrics["optuna/best_trial"] = float(trial.number)
            metrics.update({f"optuna/best/{n}": float(v)
                            for n, v in zip(self.objective_names, trial.values, strict=True)})
            tags["tinyexp.optuna.best_trial"] = str(trial.number)
            # Tags, not params: a resumed study may find a better trial, and MLflow params are
            # write-once.
            tags.update({f"tinyexp.optuna.best.{k}": str(v) for k, v in trial.params.items()})
        elif best:
            metrics["optuna/pareto_size"] = float(len(best))
            tags["tinyexp.optuna.pareto_trials"] = ",".join(str(t.number) for t in best)
        params = {"optuna.directions": ",".join(self.directions),
                  "optuna.objectives": ",".join(self.objective_names),
                  "optuna.constraints": ", ".join(
                      f"{c.metric}{'<=' if c.upper else '>='}{c.bound:g}"
                      for c in self.constraints) or "none",
                  "optuna.sampler": str((self.sampler_cfg or {}).get("_target_")),
                  "optuna.pruner": str((self.pruner_cfg or {}).get("_target_"))}
        for what, kwargs in (("results", {"metrics": metrics, "tags": tags}),
                             ("params", {"params": params}),
                             ("files", {"artifacts": files})):
            try:
                tracking.log_to_run(self.config, self.parent_run_id, **kwargs)
            except Exception as err:  # the search itself is done and saved
                log.warning("MLflow %s on the parent run: %s", what, _error_text(err))
