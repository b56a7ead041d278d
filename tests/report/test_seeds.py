"""Runs that differ only by seed become one record: mean, 95% interval, per-seed values."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from tinyexp.measure.stats import aggregate, ci95_halfwidth
from tinyexp.report.runs import records_from_dir, records_from_mlflow, table_rows
from tinyexp.report.seeds import merge_seeds, run_settings

SEED_F1 = (0.696, 0.855, 0.659, 0.586, 0.826)  # the float baseline of seed_sweep, seeds 0-4


def test_runs_that_differ_only_by_seed_are_one_record(seed_sweep):
    merged = {r.name: r for r in merge_seeds(seed_sweep)}
    assert list(merged) == ["cnn-base", "cnn-p50"]
    pruned = merged["cnn-p50"]
    assert (pruned.n_seeds, pruned.seeds, pruned.stage) == (5, [0, 1, 2, 3, 4], "pruned")
    finals = [r.final("f1") for r in seed_sweep if r.name == "cnn-p50"]
    assert pruned.final("f1") == pytest.approx(statistics.fmean(finals))
    assert pruned.final_ci("f1") == pytest.approx(ci95_halfwidth(finals))
    assert pruned.base("f1") == pytest.approx(0.7244)
    assert pruned.final_ci("params") == 0.0  # the same network size in every seed
    assert pruned.run_id == "run0-0.5 run1-0.5 run2-0.5 run3-0.5 run4-0.5"


def test_runs_with_other_settings_stay_apart(seed_sweep):
    longer = [replace(r, settings=(("prune.ratio", "0.5"), ("trainer.max_epochs", "20")))
              for r in seed_sweep if r.name == "cnn-p50"]
    merged = merge_seeds(seed_sweep + longer)
    assert [(r.name, r.n_seeds) for r in merged] == [("cnn-base", 5), ("cnn-p50", 5),
                                                     ("cnn-p50", 5)]


def test_a_repeated_run_pools_its_seeds_with_single_runs_and_a_seed_counts_once(seed_sweep):
    singles = [r for r in seed_sweep if r.name == "cnn-p50"]
    repeated = replace(singles[0], seed=0, run_id="repeated",
                       metrics=aggregate({r.seed: r.metrics for r in singles[:3]}))
    assert repeated.n_seeds == 3 and repeated.final_ci("f1") is not None
    assert merge_seeds([repeated]) == [repeated]  # alone: shown as it was logged
    merged = merge_seeds([repeated, *singles[2:]])  # seed 2 twice: once in the pool
    assert len(merged) == 1 and merged[0].seeds == [0, 1, 2, 3, 4]
    expected = merge_seeds(singles)[0]
    assert merged[0].final("f1") == pytest.approx(expected.final("f1"))
    assert merged[0].final_ci("f1") == pytest.approx(expected.final_ci("f1"))
    assert merged[0].run_id == "repeated run2-0.5 run3-0.5 run4-0.5"


def test_settings_leave_out_the_seed_and_where_a_run_logs():
    params = {"seed": "3", "repeats": "5", "cache_dir": "c", "logger.tracking_uri": "x",
              "dataset.seed": "0", "prune.ratio": "0.5"}
    assert run_settings(params) == (("dataset.seed", "0"), ("prune.ratio", "0.5"))


def test_mlflow_runs_carry_their_seed_and_settings():
    runs = [{"run_id": f"id{seed}", "name": "sensors-cnn-l1@0.5-none", "status": "FINISHED",
             "tags": {"tinyexp.arch": "cnn", "tinyexp.prune": "l1"},
             "params": {"seed": str(seed), "prune.ratio": "0.5"},
             "metrics": {"baseline/params": 10.0, "baseline/f1": f, "pruned/params": 5.0,
                         "pruned/f1": f - 0.1}} for seed, f in enumerate(SEED_F1[:2])]
    records = records_from_mlflow(runs)
    assert [r.seed for r in records] == [0, 1]
    assert records[0].settings == records[1].settings == (("prune.ratio", "0.5"),)
    assert [(r["n_seeds"], r["seeds"], r["run_id"]) for r in table_rows(records, ["f1"])] == [
        (2, "0 1", "id0 id1")]


def test_a_seed_sweep_folder_is_one_row(tmp_path):
    for job, seed in enumerate((0, 1, 2)):
        folder = tmp_path / str(job)
        folder.mkdir()
        OmegaConf.save(OmegaConf.create({"seed": seed, "dataset": {"name": "sensors"},
                                         "arch": {"name": "cnn"}, "prune": None,
                                         "quant": None}), folder / "config.yaml")
        (folder / "metrics.json").write_text(json.dumps(
            {"baseline/params": 10, "baseline/f1": SEED_F1[seed]}))
    records, missing = records_from_dir(tmp_path)
    assert missing == [] and [r.seed for r in records] == [0, 1, 2]
    rows = table_rows(records, ["f1"])
    assert len(rows) == 1 and rows[0]["n_seeds"] == 3 and rows[0]["seeds"] == "0 1 2"
    assert rows[0]["f1"] == pytest.approx(statistics.fmean(SEED_F1[:3]))
    assert rows[0]["f1_ci95"] == pytest.approx(ci95_halfwidth(SEED_F1[:3]))
