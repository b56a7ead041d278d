"""Fixtures for the contract tests: run a Hydra app of ``apps/`` as a subprocess.

Every test launches ``<python> <app> --multirun hydra.sweep.dir=<tmp>/sweep ...`` with the
working directory set to an empty ``<tmp>/cwd``; the apps folder is copied to ``<tmp>/apps`` first
(the custom-search-space example imports ``custom-search-space-objective`` from the script's
folder).

Environment knobs (all optional):

- ``CONTRACT_PYTHON``: the interpreter that runs the apps (default: ``sys.executable``).
- ``CONTRACT_SWEEPER``: a ``hydra/sweeper`` option to select on the command line, e.g.
  ``optuna5``; by default the apps' own ``override hydra/sweeper: optuna`` is used.
- ``CONTRACT_TIMEOUT``: seconds allowed per app run (default 180).

The apps see every ``hydra_plugins`` package on the interpreter's path. Another plugin that
registers ``hydra/sweeper/sampler`` options (tinyexp's own ``tinyexp_optuna`` does, for tpe,
random and nsgaii) replaces the sweeper's sampler nodes when Hydra scans it later; the header of
the pytest run lists the ``hydra_plugins`` folders and ``test_cfg_sampler_group`` catches the
shadowing. To run against the plugin alone, point ``CONTRACT_PYTHON`` at an interpreter without
the other plugin, e.g. a venv whose only ``.pth`` names the full venv's site-packages (``.pth``
files inside a directory listed that way are not processed, so editable installs drop out)::

    python3 -m venv --without-pip /tmp/ctvenv
    echo /work/main/.venv/lib/python3.11/site-packages \
        > /tmp/ctvenv/lib/python3.11/site-packages/main_venv.pth

Helpers live here as fixtures and methods so that the test modules import nothing from this
file (the repository's pytest settings use ``--import-mode=importlib``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

APPS = Path(__file__).resolve().parent / "apps"
PYTHON = os.environ.get("CONTRACT_PYTHON") or sys.executable
SWEEPER = os.environ.get("CONTRACT_SWEEPER") or None
TIMEOUT = float(os.environ.get("CONTRACT_TIMEOUT") or 180)


@dataclass
class Job:
    idx: int
    dir: Path
    config: dict[str, Any]  # the job's composed config (.hydra/config.yaml), typed by YAML
    overrides: list[str]  # .hydra/overrides.yaml


@dataclass
class AppRun:
    cmd: list[str]
    cwd: Path
    sweep_dir: Path
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + "\n" + self.stderr

    def describe(self, tail: int = 4000) -> str:
        return (
            f"command: {' '.join(self.cmd)}\nexit code: {self.returncode}\n"
            f"--- stdout (tail) ---\n{self.stdout[-tail:]}\n"
            f"--- stderr (tail) ---\n{self.stderr[-tail:]}"
        )

    def assert_ok(self) -> None:
        assert self.returncode == 0, "the app failed:\n" + self.describe()

    def assert_failed(self) -> None:
        assert self.returncode != 0, "the app was expected to fail:\n" + self.describe()

    def results(self) -> dict[str, Any]:
        path = self.sweep_dir / "optimization_results.yaml"
        assert path.is_file(), f"no {path}:\n" + self.describe()
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict), f"{path} is not a mapping: {data!r}"
        return data

    def job_dirs(self) -> list[Path]:
        if not self.sweep_dir.is_dir():
            return []
        return [p for p in self.sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]

    def jobs(self) -> list[Job]:
        jobs = []
        for d in self.job_dirs():
            assert d.name.isdigit(), f"job folder {d.name!r} is not upstream's 0..N-1 numbering"
            config = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
            overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()) or []
            jobs.append(Job(int(d.name), d, config, overrides))
        return sorted(jobs, key=lambda j: j.idx)

    def hydra_node(self) -> dict[str, Any]:
        """The YAML printed by ``--cfg hydra -p <node>`` (the ``# @package`` line is a comment)."""
        self.assert_ok()
        data = yaml.safe_load(self.stdout)
        assert isinstance(data, dict), "--cfg output is not a mapping:\n" + self.describe()
        return data


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    dst = tmp_path / "apps"
    shutil.copytree(APPS, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


RunApp = Callable[..., AppRun]


@pytest.fixture
def run_app(tmp_path: Path, apps: Path) -> RunApp:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    counter = [0]

    def run(
        script: str,
        *overrides: str,
        multirun: bool = True,
        sweep_dir: Path | None = None,
        pre_args: Sequence[str] = (),
        timeout: float = TIMEOUT,
    ) -> AppRun:
        counter[0] += 1
        if sweep_dir is None:
            sweep_dir = tmp_path / ("sweep" if counter[0] == 1 else f"sweep{counter[0]}")
        cmd = [PYTHON, str(apps / script)]
        if multirun:
            cmd.append("--multirun")
        cmd += list(pre_args)
        if multirun:
            cmd.append(f"hydra.sweep.dir={sweep_dir}")
        if SWEEPER:
            cmd.append(f"hydra/sweeper={SWEEPER}")
        cmd += list(overrides)
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   PYTHONDONTWRITEBYTECODE="1")
        env.pop("HYDRA_FULL_ERROR", None)
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n"
                        f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}")
        return AppRun(cmd, cwd, sweep_dir, proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def app_python() -> str:
    return PYTHON


def _importable(module: str) -> bool:
    proc = subprocess.run([PYTHON, "-c", f"import {module}"], capture_output=True)
    return proc.returncode == 0


@pytest.fixture(scope="session")
def has_module() -> Callable[[str], bool]:
    cache: dict[str, bool] = {}

    def check(module: str) -> bool:
        if module not in cache:
            cache[module] = _importable(module)
        return cache[module]

    return check


def pytest_report_header(config: Any) -> list[str]:
    """The app interpreter and its hydra_plugins folders (another plugin there can shadow the
    sweeper's sampler configs)."""
    code = ("import hydra_plugins, os\n"
            "for p in hydra_plugins.__path__: print(p, sorted(os.listdir(p)))")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=APPS)
    lines = [f"contract apps: python={PYTHON} hydra/sweeper={SWEEPER or '(the apps own)'}"]
    if proc.returncode != 0:
        return lines + ["  hydra_plugins: not importable by the app interpreter"]
    return lines + [f"  hydra_plugins: {line}" for line in proc.stdout.splitlines()]
