"""The end of a multirun: the compact table, also when a job failed."""

from __future__ import annotations

import os

import pytest
from hydra.utils import get_class
from support import ROOT, TINY, compose, run_cli

from tinyexp.report.callback import MultirunSummary


def test_config_names_the_callback():
    cfg = compose(hydra=True)
    assert get_class(cfg.hydra.callbacks.summary._target_) is MultirunSummary


def test_multirun_ends_with_the_compact_table(sweep):
    _, result = sweep
    summary = result.stdout[result.stdout.index("4 runs in"):]
    for name in ("sensors-cnn-none-none", "sensors-cnn-l1@0.5-none", "sensors-lstm-none-none",
                 "sensors-lstm-l1@0.5-none"):
        assert name in summary
    assert "% smaller" in summary  # the pruned runs, against their own baselines
    assert "full report: tinyexp-report --sweep" in summary


@pytest.mark.slow  # end to end, ~10 s: the slow tier
def test_failed_job_still_gets_the_summary_of_the_others(tmp_path):
    # The second job's training raises (its callback breaks on purpose): a failure while
    # running, not bad input (which would stop the sweep before any job).
    result = run_cli(["-m", *TINY, "callbacks.early_stopping._target_=pytorch_lightning."
                      "callbacks.EarlyStopping,failing_callback.FailingEarlyStopping",
                      "cache_dir=cache", "hydra.sweep.dir=sweep"], tmp_path,
                     env={"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"})
    assert result.returncode != 0
    assert "1 run in" in result.stdout and "sensors-cnn-l1@0.5-none" in result.stdout
    assert "jobs without results (failed, pruned by a search, or interrupted): 1" in result.stdout
