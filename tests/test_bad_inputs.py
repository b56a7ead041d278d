"""Bad input, end to end: every case runs the real CLI (``python -m tinyexp`` or
``tinyexp-report``) in a fresh folder and must end with exit status 2 and one stderr line
``tinyexp: error: <key or file>: <what is wrong>`` naming the key the user typed (or the file),
with no traceback, no MLflow run and nothing trained.

The cases run together from one module fixture (``WORKERS`` at a time), then one test per case
reads its result. A case whose check is missing would train a whole job: it is stopped after
``HANG_GUARD`` seconds and fails, saying so.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sqlite3
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from skab_synth import BREAKS, BROKEN, skab
from support import run_cli, run_report

HANG_GUARD = 240  # seconds; a rejected input takes a few
WORKERS = 4
HAS_PG_DRIVER = any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2"))
PG_URL = "postgresql://u:secret@localhost/db"
# Lines libraries print on stderr that are not the error.
HARMLESS = [re.compile(p) for p in (
    r"^\S+:\d+: \w*Warning: ",      # warnings.warn(...) output, first line
    r"^\s+warnings\.warn\(",         # its source line
    # MLflow creating an empty store (the report reads one): its log lines, not an error
    r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.store\.db\.utils: ",
    r"^INFO  \[alembic\.runtime\.migration\] ",
)]


@dataclass(frozen=True)
class Case:
    key: str                                   # "{cwd}" stands for the case's folder
    args: tuple[str, ...]
    report: bool = False                       # tinyexp-report instead of python -m tinyexp
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    secret: str | None = None                  # must appear nowhere in stdout or stderr
    skip: str | None = None
    label: str = ""                            # what `setup` did, when it did something

    @property
    def id(self) -> str:
        words = ["tinyexp-report" if self.report else "tinyexp", *map(shlex.quote, self.args)]
        return " ".join(words) + (f" [{self.label}]" if self.label else "")


# `<the key the error names> | <arguments>`; a `[...]` line gives the arguments that come first
# on the lines below it (`[report]`: tinyexp-report's arguments).
TABLE = """
[]
# Hydra's own: unknown options and keys, overrides that do not parse
dataset | dataset=nope
arch | arch=nope
prune | prune=nope
quant | quant=nope
distill | distill=nope
deploy | deploy=nope
analysis | analysis=nope
target | target=nope
trainer | trainer=nope
logger | logger=nope
experiment | experiment=nope
search | search=nope
trainer.foo | trainer.foo=1
nope | nope=1
seed | +seed=1
nope | ~nope
prune.ratio | prune.ratio=abc
prune.ratio | 'prune.ratio=['
prune.ratio | -m 'prune.ratio=choice(0.1,'
# the top level
seed | seed=-1
seed | seed=abc
seed | seed=1.5
repeats | repeats=0
repeats | repeats=abc
objective | objective=nope
objective | objective=accuracy
cache_dir | cache_dir=
cache_dir | cache_dir=/proc/x
# optim
optim.lr | optim.lr=0
optim.lr | optim.lr=-1
optim.lr | optim.lr=nan
optim.lr | optim.lr=inf
optim.lr | optim.lr=abc
optim._target_ | optim._target_=torch.optim.Nope
optim._target_ | optim._target_=torch.nn.Linear
optim.foo | +optim.foo=1
# trainer (the default trainer has no limit_*_batches: then Hydra says so; trainer=smoke has them)
trainer.limit_train_batches | trainer.limit_train_batches=-1
trainer.limit_train_batches | trainer.limit_train_batches=0
trainer.limit_train_batches | trainer=smoke trainer.limit_train_batches=-1
trainer.limit_train_batches | trainer=smoke trainer.limit_train_batches=0
trainer.limit_train_batches | trainer=smoke trainer.limit_train_batches=1.5
trainer.limit_val_batches | trainer=smoke trainer.limit_val_batches=-1
trainer.accelerator | trainer.accelerator=gpu
trainer.accelerator | trainer.accelerator=nope
trainer.resume | trainer.resume=sometimes
trainer.foo | +trainer.foo=1
# image data and the model zoo
dataset.data_dir | dataset=mnist arch=custom_cnn dataset.data_dir={cwd}/nowhere
dataset.data_dir | dataset=cifar10 arch=resnet dataset.data_dir={cwd}/nowhere
dataset.val_fraction | dataset=digits arch=resnet dataset.val_fraction=1.5
arch.depths | dataset=digits arch=resnet arch.depths=[1,1,1,1,1] arch.widths=[4,4,4,4,4]
arch.alpha | dataset=digits arch=mobilenet_v1 arch.alpha=0
arch | dataset=sensors arch=vgg
prune.cut | dataset=digits arch=resnet prune=depth
prune.cut | dataset=digits arch=resnet prune=depth prune.cut=3
prune.cut | dataset=digits arch=custom_cnn prune=depth prune.cut=1
analysis.cuts | dataset=digits arch=resnet analysis=depth analysis.cuts=[5]
trainer.max_epochs | trainer.max_epochs=0
trainer.max_epochs | trainer.max_epochs=abc
trainer.devices | trainer.devices=0
trainer.precision | +trainer.precision=7
trainer.gradient_clip_val | +trainer.gradient_clip_val=-1
trainer.log_every_n_steps | trainer.log_every_n_steps=0
trainer.enable_progress_bar | trainer.enable_progress_bar=maybe
trainer._target_ | trainer._target_=nope.Trainer
# callbacks
callbacks.early_stopping.mode | callbacks.early_stopping.mode=sideways
callbacks.early_stopping.monitor | callbacks.early_stopping.monitor=val/nope
callbacks.early_stopping.patience | callbacks.early_stopping.patience=-1
callbacks.early_stopping.patience | callbacks.early_stopping.patience=abc
callbacks.early_stopping.foo | +callbacks.early_stopping.foo=1
callbacks.early_stopping._target_ | callbacks.early_stopping._target_=nope.Nope
# finetune, measure
finetune.lr | finetune.lr=0
finetune.lr | finetune.lr=inf
finetune.scheduler | finetune.scheduler=linear
finetune.dropout | finetune.dropout=1.5
measure.opset | measure.opset=5
measure.latency_runs | measure.latency_runs=0
measure.latency_warmup | measure.latency_warmup=-1
measure.foo | +measure.foo=1
measure.latency_lock | measure.latency_lock=relative.lock
measure.latency_lock | measure.latency_lock={cwd}
# dataset: sensors (the default), digits, SKAB's folder
dataset.threshold_scale | dataset.threshold_scale=inf
dataset.threshold_scale | dataset.threshold_scale=0
dataset.threshold_quantile | dataset.threshold_quantile=1.5
dataset.threshold_quantile | dataset.threshold_quantile=nan
dataset.num_anomalies | dataset.num_anomalies=10000
dataset.num_anomalies | dataset.num_anomalies=0
dataset.window | dataset.window=2
dataset.window | dataset.window=30
dataset.val_fraction | dataset.val_fraction=1.0
dataset.val_fraction | dataset.val_fraction=nan
dataset.batch_size | dataset.batch_size=0
dataset.batch_size | dataset.batch_size=abc
dataset.train_steps | dataset.train_steps=10
dataset.stride | dataset.stride=0
dataset.foo | +dataset.foo=1
dataset.test_fraction | dataset=digits arch=custom_cnn dataset.test_fraction=1.0
arch | dataset=digits arch=cnn
dataset.data_dir | dataset=skab
dataset.data_dir | dataset=skab dataset.data_dir={cwd}/nope
dataset.data_dir | dataset=skab dataset.data_dir={cwd}
# arch
arch.dropout | arch=lstm arch.dropout=0.5
arch.hidden_size | arch=lstm arch.hidden_size=0
arch.channels | 'arch.channels=[]'
arch.channels | 'arch.channels=[32,-1]'
arch.channels | arch.channels=abc
arch.kernel_size | arch.kernel_size=4
arch.dropout | arch.dropout=1.0
arch.d_model | arch=transformer arch.d_model=30
arch.num_layers | arch=transformer arch.num_layers=0
arch.foo | +arch.foo=1
# prune
prune.round_to | prune.round_to=1000
prune.round_to | prune.round_to=0
prune.ratio | prune.ratio=1.5
prune.ratio | prune.ratio=-0.1
prune.ratio | prune.ratio=nan
prune.steps | prune.steps=0
prune.finetune_epochs | prune.finetune_epochs=-1
prune.foo | +prune.foo=1
prune._target_ | prune._target_=tinyexp.stages.prune.Nope
prune.layer_ratios | prune.layer_ratios={cwd}/nope.csv
# quant, distill, deploy, analysis, target
quant.calibration_samples | quant=int8 quant.calibration_samples=0
quant.format | quant=int8 quant.format=nope
quant.weight_bits | quant=qat quant.weight_bits=1
quant.lr | quant=qat quant.lr=0
quant.foo | quant=int8 +quant.foo=1
distill.temperature | distill=kd distill.temperature=0
distill.weight | distill=kd distill.weight=1.5
deploy.mode | deploy=tflm deploy.mode=nope
deploy.int8_quantizer | deploy=tflm deploy.int8_quantizer=nope
analysis.ratios | analysis=layers 'analysis.ratios=[1.0]'
analysis.metric | analysis=layers analysis.metric=accuracy
target.flash_bytes | target.flash_bytes=0
target.clock_mhz | target.clock_mhz=-1
target.ram_bytes | target.ram_bytes=abc
# logger
logger.tracking_uri | logger.tracking_uri=bogus://x
logger.tracking_uri | logger.tracking_uri=sqlite:////proc/x/mlflow.db
logger.experiment_name | logger.experiment_name=
logger.foo | +logger.foo=1
# experiment presets, grid sweeps (every point checked before the first job)
arch | experiment=digits_custom_cnn arch=cnn
arch.hidden | experiment=digits_tiny arch=cnn
prune.ratio | experiment=digits_custom_cnn prune.ratio=2
prune.ratio | -m prune.ratio=0.3,1.5
arch | -m arch=cnn,nope
# the Optuna searches: the settings, then the search space (its corners are checked too)
search.n_trials | -m search=pareto search.n_trials=2.5
hydra.sweeper.sampler.population_size | -m search=pareto hydra.sweeper.sampler.population_size=1
[-m search=memory_budget]
search.n_trials | search.n_trials=abc
search.n_trials | search.n_trials=0
hydra.sweeper.n_jobs | hydra.sweeper.n_jobs=0
hydra.sweeper.max_failures | hydra.sweeper.max_failures=0
hydra.sweeper.direction | hydra.sweeper.direction=sideways
hydra.sweeper.objectives.0 | 'hydra.sweeper.objectives=[f1]'
hydra.sweeper.storage | hydra.sweeper.storage=bogus://x
hydra.sweeper.storage | hydra.sweeper.storage=sqlite:////proc/x/optuna.db
hydra.sweeper.storage | hydra.sweeper.storage=sqlite://
hydra.sweeper.grace_period | hydra.sweeper.grace_period=10
hydra.sweeper.heartbeat_interval | hydra.sweeper.heartbeat_interval=abc
hydra.sweeper.plots | hydra.sweeper.plots=maybe
hydra.sweeper.validator | hydra.sweeper.validator=nope.nothing
hydra/sweeper/sampler | hydra/sweeper/sampler=nope
hydra.sweeper.sampler.seed | hydra.sweeper.sampler.seed=-1
seed | seed=-1
hydra.sweeper.pruner.n_warmup_steps | hydra.sweeper.pruner.n_warmup_steps=-1
target.flash_bytes | target.flash_bytes=abc
prune.ratio | 'prune.ratio=interval(0.9,0.1)'
prune.ratio | 'prune.ratio=interval(0.0,1.5)'
quant | 'quant=choice(none,nope)'
hydra.sweeper.group_params.arch.lstn | '+hydra.sweeper.group_params.arch.lstn={}'
[report]
--tracking-uri | --tracking-uri bogus://x
--tracking-uri | --tracking-uri sqlite:///{cwd}/nope/mlflow.db
--out | --out /proc/x
--bogus | --bogus
--sweep | --sweep
--sweep | --sweep {cwd}/nope
--tag | --sweep x --tag k=v
--tag | --tag tinyexp.arch
--metric | --metric nope
--experiment | --experiment ''
--experiment | --no-log
"""


def _table(text: str) -> list[Case]:
    cases, prefix, report = [], [], False
    for line in text.strip().splitlines():
        if line.startswith("["):
            report = line == "[report]"
            prefix = [] if report else shlex.split(line.strip("[]"))
        elif line.strip() and not line.startswith("#"):
            key, args = (part.strip() for part in line.split(" | ", 1))
            cases.append(Case(key, (*prefix, *shlex.split(args)), report=report))
    return cases


def _touch(name: str, text: str = "taken\n") -> Callable[[Path], None]:
    return lambda cwd: (cwd / name).write_text(text)


SKAB_ARGS = ("dataset=skab", "dataset.data_dir={cwd}/skab")
PG = dict(secret="secret", skip="a PostgreSQL driver is installed" if HAS_PG_DRIVER else None)
TAKEN = _touch("taken")

CASES: list[Case] = [
    *_table(TABLE),
    Case("cache_dir", ("cache_dir={cwd}/taken",), setup=TAKEN, label="a file"),
    Case("logger.tracking_uri", (f"logger.tracking_uri={PG_URL}",), **PG),
    Case("hydra.sweeper.storage", ("-m", "search=memory_budget",
                                   f"hydra.sweeper.storage={PG_URL}"), **PG),
    # SKAB files, each broken another way: the error names the file
    Case("dataset.folders", (*SKAB_ARGS, "dataset.folders=[nope]"), setup=skab()),
    Case("dataset.train_rows", (*SKAB_ARGS, "dataset.train_rows=10"), setup=skab()),
    Case("dataset.data_dir", SKAB_ARGS, setup=skab(anomalies=False), label="no anomaly at all"),
    *[Case(f"{{cwd}}/skab/{BROKEN}", SKAB_ARGS, setup=skab(brk), label=name)
      for name, brk in BREAKS.items()],
    # tinyexp-report
    Case("--tracking-uri", ("--tracking-uri", PG_URL), report=True, **PG),
    Case("--tracking-uri", ("--tracking-uri", "sqlite:///{cwd}/taken"), report=True,
         setup=_touch("taken", "not a database\n"), label="a text file"),
    Case("--tracking-uri", ("--tracking-uri", "{cwd}/taken"), report=True, setup=TAKEN,
         label="a file"),
    Case("MLFLOW_TRACKING_URI", (), report=True, env={"MLFLOW_TRACKING_URI": "bogus://x"},
         label="MLFLOW_TRACKING_URI=bogus://x"),
    Case("--out", ("--out", "{cwd}/taken"), report=True, setup=TAKEN, label="a file"),
    Case("--out", ("--out", "{cwd}/taken/report"), report=True, setup=TAKEN, label="a file"),
]


# ----------------------------------------------------------------------------- running them


@dataclass
class Outcome:
    cwd: Path
    result: subprocess.CompletedProcess | None  # None: still running after HANG_GUARD s


def _run(case: Case, cwd: Path) -> Outcome:
    if case.setup is not None:
        case.setup(cwd)
    args = [a.replace("{cwd}", str(cwd)) for a in case.args]
    try:
        result = (run_report if case.report else run_cli)(args, cwd, env=case.env,
                                                          timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        result = None
    return Outcome(cwd, result)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Outcome]:
    """Run the selected cases, ``WORKERS`` at a time, each in a fresh folder."""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec")}
    cases = [c for c in CASES if c.id in wanted and c.skip is None]
    folders = {c.id: tmp_path_factory.mktemp(f"case{i}-") for i, c in enumerate(cases)}
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {c.id: pool.submit(_run, c, folders[c.id]) for c in cases}
        return {key: future.result() for key, future in futures.items()}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if line.strip() and not any(p.search(line) for p in HARMLESS)]


def _mlflow_runs(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master")}
        return con.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0


def test_the_table_covers_enough_cases():
    assert len(CASES) >= 110 and len({c.id for c in CASES}) == len(CASES)


# The fast tier runs every sixth case (a spread over the table); the slow tier runs them all.
PARAMS = [pytest.param(c, id=c.id, marks=() if i % 6 == 0 else pytest.mark.slow)
          for i, c in enumerate(CASES)]


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_is_one_line_and_runs_nothing(outcomes, case):
    if case.skip:
        pytest.skip(case.skip)
    out = outcomes[case.id]
    assert out.result is not None, f"still running after {HANG_GUARD} s: not rejected up front"
    result, key = out.result, case.key.replace("{cwd}", str(out.cwd))
    shown = f"exit {result.returncode}, stderr:\n{result.stderr[-2500:]}"
    assert "Traceback" not in result.stderr + result.stdout, shown
    assert result.returncode == 2, shown
    lines = _error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("tinyexp: error: "), shown
    # `tinyexp: error: <key or file>: <what is wrong>`: the key field is the key itself
    field_ = lines[0].removeprefix("tinyexp: error: ").split(": ", 1)[0]
    assert field_ == key, f"expected the key {key!r}: {lines[0]}"
    if case.secret:
        assert case.secret not in result.stderr + result.stdout
    assert _mlflow_runs(out.cwd / "mlflow.db") == 0, "an MLflow run was created"
    assert not [p for p in out.cwd.rglob("metrics.json")], "a job ran to the end"
    cache = out.cwd / ".tinyexp_cache"
    assert not (cache.exists() and any(p.is_file() for p in cache.rglob("*"))), "it trained"
