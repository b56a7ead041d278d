"""A callback that breaks the training it is given: a search-space point that fails inside the
job, after its MLflow run started (every check before the run passes it)."""

from __future__ import annotations

from pytorch_lightning.callbacks import EarlyStopping


class FailingEarlyStopping(EarlyStopping):
    """EarlyStopping whose training raises as soon as it starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        raise RuntimeError("FailingEarlyStopping: this trial breaks on purpose")
