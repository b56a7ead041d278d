"""The MLflow parent run of an Optuna study: a callback of the sweeper
(``hydra.sweeper.callbacks`` of ``hydra/sweeper: tinyexp_optuna``).

At the start of the study it gets or creates the study's parent run (found through the tracking
server by its ``tinyexp.optuna.study`` tag: workers on several machines share it, and so do the
jobs) and records its id on the study
(``tinyexp.mlflow_parent_run_id``); at the end it logs the trial counts, the best trial (or
the Pareto front) and the results files to it. Nothing happens with ``logger=none``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class MlflowStudyRun:
    """``on_study_start`` / ``on_study_end`` hooks of the Optuna sweeper."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None

    @staticmethod
    def _tracking(sweeper: Any) -> Any:
        """tinyexp.tracking when the config logs to MLflow, else None."""
        if OmegaConf.select(sweeper.config, "logger.name", default=None) != "mlflow":
            return None
        try:
            from tinyexp import tracking
        except ImportError as err:
            log.warning("no MLflow logging: %s", err)
            return None
        return tracking

    def on_study_start(self, sweeper: Any, study: Any) -> None:
        tracking = self._tracking(sweeper)
        if tracking is None:
            return
        self.parent_run_id = tracking.sweep_parent_run(sweeper.config, sweeper.sweep_dir,
                                                       f"optuna {sweeper.study_name}",
                                                       study=sweeper.study_name)
        if self.parent_run_id:
            study.set_user_attr("tinyexp.mlflow_parent_run_id", self.parent_run_id)

    def on_study_end(self, sweeper: Any, study: Any, results: dict[str, Any],
                     files: list[Path]) -> None:
        tracking = self._tracking(sweeper)
        if tracking is None or not self.parent_run_id:
            return
        names = sweeper.checked.value_names
        directions = sweeper.checked.directions
        metrics = {f"optuna/n_{k}": float(v) for k, v in results["trials"].items()}
        metrics["optuna/n_feasible"] = float(results["feasible_trials"])
        tags = {"tinyexp.optuna.study": results["study_name"],
                "tinyexp.optuna.storage": results["storage"]}
        best = results.get("best_feasible")
        if len(directions) == 1 and best:
            metrics["optuna/best_trial"] = float(best["number"])
            metrics.update({f"optuna/best/{n}": float(v)
                            for n, v in zip(names, best["values"], strict=True)})
            tags["tinyexp.optuna.best_trial"] = str(best["number"])
            # Tags, not params: a resumed study may find a better trial, and MLflow params are
            # write-once.
            tags.update({f"tinyexp.optuna.best.{k}": str(v) for k, v in best["params"].items()})
        elif results.get("solutions"):
            metrics["optuna/pareto_size"] = float(len(results["solutions"]))
            tags["tinyexp.optuna.pareto_trials"] = ",".join(
                str(s["number"]) for s in results["solutions"])
        constraints = sweeper.checked.constraints
        sampler, pruner = sweeper.settings.sampler, sweeper.settings.pruner
        params = {"optuna.directions": ",".join(directions),
                  "optuna.objectives": ",".join(names),
                  "optuna.constraints": ", ".join(
                      f"{c.metric}{'<=' if c.upper else '>='}{c.bound:g}"
                      for c in constraints) or "none",
                  "optuna.sampler": str((sampler or {}).get("_target_")),
                  "optuna.pruner": str((pruner or {}).get("_target_"))}
        for what, kwargs in (("results", {"metrics": metrics, "tags": tags}),
                             ("params", {"params": params}),
                             ("files", {"artifacts": files})):
            try:
                tracking.log_to_run(sweeper.config, self.parent_run_id, **kwargs)
            except Exception as err:  # the search itself is done and saved
                log.warning("MLflow %s on the parent run: %s", what, err)
