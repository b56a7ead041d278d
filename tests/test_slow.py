"""The slow tier: full-size runs and the installed wheel (`make test-slow`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import ROOT, run_cli

pytestmark = pytest.mark.slow


def test_sensitivity_sweep_prunes_every_architecture_to_at_most_70_percent(tmp_path):
    # one 10-epoch fine-tune (the defaults run up to 3 x 60): the widths are what is checked
    result = run_cli(["-m", "arch=cnn,lstm,transformer", "prune=l1", "prune.steps=1",
                      "prune.finetune_epochs=10", "hydra.sweep.dir=sweep"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in range(3):
        metrics = json.loads((tmp_path / "sweep" / str(job) / "metrics.json").read_text())
        assert metrics["pruned/params"] <= 0.7 * metrics["baseline/params"]
        assert metrics["baseline/f1"] > 0.2  # a trained detector, not noise


def test_installed_wheel_runs_from_another_directory(tmp_path):
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    # tinyexp's wheel and the one of the Optuna sweeper it depends on (plugins/)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(ROOT), str(ROOT / "plugins" / "hydra_optuna5_sweeper")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), *map(str, wheels.glob("*.whl"))], check=True)
    env = {"PYTHONPATH": str(target)}  # the installed copy, not the checkout
    result = run_cli(["trainer=smoke", "logger=none", "hydra.run.dir=out"], work, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "out" / "metrics.json").is_file()
    where = subprocess.run([sys.executable, "-c", "import tinyexp; print(tinyexp.__file__)"],
                           cwd=work, env={**env, "PATH": ""}, capture_output=True, text=True)
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
