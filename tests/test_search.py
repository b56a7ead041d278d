"""The job's side of a search: fine-tuning reports to the Optuna trial and stops when told."""

from __future__ import annotations

import optuna
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from tinyexp.lit import train
from tinyexp.search import OptunaPruning, pruning_callback


class _Data(pl.LightningDataModule):
    """Minimal series datamodule: random windows (plain tensors), already split."""

    task = "anomaly"

    def __init__(self):
        super().__init__()
        self.x = torch.randn(64, 8, 4, generator=torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return DataLoader(self.x[:48], batch_size=16)

    def val_dataloader(self):
        return DataLoader(self.x[48:], batch_size=16)


def _study(tmp_path, pruner, direction="minimize"):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, pruner=pruner,
                                direction=direction)
    trial = study.ask()
    node = {"study_name": "s", "storage": storage, "trial_id": trial._trial_id,
            "trial_number": trial.number}
    return study, trial, OmegaConf.create({"optuna": node})


def _cfg():
    return OmegaConf.create({
        "seed": 0,
        "trainer": {"_target_": "pytorch_lightning.Trainer", "max_epochs": 3,
                    "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "optim": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01},
        "callbacks": {},
    })


def test_hopeless_trial_is_pruned_during_fine_tuning(tmp_path):
    # A pruner that prunes whatever is reported: the first epoch must stop the training.
    pruner = optuna.pruners.ThresholdPruner(upper=-1.0)
    study, trial, job = _study(tmp_path, pruner)
    callback = pruning_callback(job, pruner)
    assert isinstance(callback, OptunaPruning)
    with pytest.raises(optuna.TrialPruned):
        train(nn.Linear(4, 4), _Data(), _cfg(), extra_callbacks=[callback])
    reported = study.trials[0].intermediate_values
    assert list(reported) == [0]  # one epoch reported, then stopped


def test_reports_every_epoch_and_negates_loss_for_maximizing_studies(tmp_path):
    study, trial, job = _study(tmp_path, optuna.pruners.NopPruner(), direction="maximize")
    callback = pruning_callback(job, optuna.pruners.NopPruner())
    train(nn.Linear(4, 4), _Data(), _cfg(), extra_callbacks=[callback])
    values = study.trials[0].intermediate_values
    assert sorted(values) == [0, 1, 2]
    assert all(v < 0 for v in values.values())  # -loss: higher is better, like the study


def test_no_callback_outside_a_search_or_for_multi_objective_studies(tmp_path):
    assert pruning_callback(OmegaConf.create({})) is None
    nop = optuna.pruners.NopPruner()
    storage = f"sqlite:///{tmp_path / 'mo.db'}"
    study = optuna.create_study(study_name="mo", storage=storage,
                                directions=["maximize", "minimize"])
    trial = study.ask()
    job = OmegaConf.create({"optuna": {"study_name": "mo", "storage": storage,
                                       "trial_id": trial._trial_id, "trial_number": 0}})
    assert pruning_callback(job, nop) is None
    assert pruning_callback(job) is None  # no sweeper, no pruner
