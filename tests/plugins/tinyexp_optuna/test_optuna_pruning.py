"""The Optuna pruner in a real search: a hopeless trial stops during its fine-tuning."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from support import run_cli


@pytest.mark.slow  # end to end, ~20 s: the slow tier
def test_a_real_search_prunes_a_hopeless_trial_during_fine_tuning(tmp_path):
    # Trial 0 trains normally. Trial 1 resumes the same study with a learning rate that cannot
    # train anything: after its first fine-tuning epoch its validation loss is far worse than
    # trial 0's at that epoch, and the median pruner (one finished trial is enough) stops it.
    sweep = tmp_path / "search"
    common = ["-m", "search=memory_budget", "target=tiny", "trainer=smoke",
              "trainer.limit_train_batches=1.0", "trainer.max_epochs=4",
              "dataset.train_steps=2000", "dataset.test_steps=640", "prune.finetune_epochs=3",
              "prune.steps=1",
              "measure.latency_warmup=1", "measure.latency_runs=5", "prune.ratio=0.5",
              "quant=none", "arch.channels=[32,16]", "hydra.sweeper.pruner.n_startup_trials=1",
              "hydra.sweeper.pruner.n_warmup_steps=0", f"hydra.sweep.dir={sweep}",
              "cache_dir=cache"]
    for n_trials, lr in ((1, "0.001"), (2, "0.0000001")):
        result = run_cli([*common, f"search.n_trials={n_trials}", f"optim.lr={lr}"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="memory_budget-tiny-sensors-cnn",
                              storage=f"sqlite:///{sweep / 'optuna.db'}")
    good, hopeless = study.trials
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [0, 1, 2]
    assert hopeless.state == TrialState.PRUNED
    assert list(hopeless.intermediate_values) == [0]  # stopped after its first epoch
    assert hopeless.intermediate_values[0] < good.intermediate_values[0]  # -val/loss: worse
    assert not (sweep / "1" / "metrics.json").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tinyexp").experiment_id])
    by_trial = {r.data.tags.get("tinyexp.trial"): r for r in runs}
    assert by_trial["1"].data.tags["tinyexp.pruned"] == "1"
    assert by_trial["0"].info.status == "FINISHED"
