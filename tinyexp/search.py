"""The job's side of an Optuna search: report fine-tuning progress to the trial, stop early.

The Optuna sweeper (``hydra/sweeper: tinyexp_optuna``: hydra-optuna5-sweeper with
``trial_node: optuna``) hands every job its trial through the ``optuna`` config node (study
name, storage, trial id and number). Here the job reports its validation loss after each
fine-tuning epoch, and raises ``optuna.TrialPruned`` when the study's pruner finds the trial
hopeless.
"""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig


class OptunaPruning(pl.Callback):
    """Report ``monitor`` after every validation epoch; raise ``TrialPruned`` when told to.

    Steps count on across trainings (pruning steps, then QAT), so trials compare at the same
    point of their fine-tuning. A study that maximizes gets the negated loss, so "better" means
    the same thing to the pruner as to the study.
    """

    def __init__(self, trial, monitor: str = "val/loss") -> None:
        import optuna

        self.trial = trial
        self.monitor = monitor
        self.sign = -1.0 if trial.study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        self.step = 0

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        import optuna

        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        self.trial.report(self.sign * float(value), self.step)
        self.step += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {self.step} fine-tuning epochs "
                                     f"({self.monitor}={float(value):.4g})")


def _sweeper_pruner():
    """The pruner the sweeper is configured with (Optuna's storage does not keep it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    if not HydraConfig.initialized():
        return None
    node = HydraConfig.get().sweeper.get("pruner")
    return instantiate(node) if node else None


def pruning_callback(cfg: DictConfig, pruner=None) -> OptunaPruning | None:
    """The callback for the trial this job runs, or None outside a single-objective search
    with a pruner.

    Args:
        cfg: the job config; its ``optuna`` node names the study, storage and trial.
        pruner: the study's pruner; by default the one configured on the sweeper.
    """
    node = cfg.get("optuna")
    if not node or node.get("trial_id") is None:
        return None
    pruner = pruner or _sweeper_pruner()
    if pruner is None:
        return None
    import optuna
    from hydra_plugins.hydra_optuna5_sweeper import storage_url

    # The URL comes without its password; storage_url puts it back from the environment.
    storage = storage_url(node.storage)
    if storage and storage.startswith(("postgresql", "mysql")):
        # a database server restarted mid-training: a stale pooled connection is replaced
        storage = optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True})
    study = optuna.load_study(study_name=node.study_name, storage=storage, pruner=pruner)
    if len(study.directions) > 1:
        return None  # Optuna prunes single-objective studies only
    return OptunaPruning(optuna.trial.Trial(study, int(node.trial_id)))
