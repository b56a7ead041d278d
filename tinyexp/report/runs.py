"""Report inputs: selecting and reading experiment runs (:class:`Record`), and the raw rows
of the table. OmegaConf and MLflow load on use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyexp.config import ALL_TASK_METRICS
from tinyexp.measure import changes, stats
from tinyexp.report.seeds import merge_seeds, run_settings
from tinyexp.stages.base import MODEL_STAGES

# A run's last stage holds the deployable artifact: it is the one the table reports.
STAGES = MODEL_STAGES
LOWER_IS_BETTER = frozenset({"mse", "far", "mar"})
# Cost columns: (metric key, table header). The change is the reduction against the float
# baseline (positive = smaller or faster), as in tinyexp.measure.changes.
COSTS = (("params", "params"), ("macs", "MACs"), ("latency_ms", "latency ms"),
         ("size_bytes", "size B"), ("flash_bytes", "flash B"), ("ram_bytes", "RAM B"))
_QUANT_ORDER = ("none", "dynamic", "fp16", "int16x8", "int8", "qat")


class ReportError(ValueError):
    """Bad selection or option: reported as one line, before anything is written."""


@dataclass
class Record:
    """One finished experiment run: what it was and its flat ``stage/metric`` values."""

    name: str
    dataset: str
    arch: str
    prune: str
    ratio: float
    quant: str
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    seed: int | None = None
    # The run's config without its seed (sorted flat key/value pairs): runs that differ only
    # by seed have equal settings and merge into one row (tinyexp.report.seeds).
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def stage(self) -> str:
        """The last stage the run measured (its deployable artifact)."""
        return [s for s in STAGES if f"{s}/params" in self.metrics][-1]

    def final(self, name: str) -> float | None:
        """The final stage's value of ``name`` (the mean over seeds for a repeated run)."""
        return self.metrics.get(f"{self.stage}/{name}")

    def base(self, name: str) -> float | None:
        return self.metrics.get(f"baseline/{name}")

    def final_ci(self, name: str) -> float | None:
        """Half-width of the 95% interval of :meth:`final` over seeds; None for one seed."""
        return stats.mean_ci(self.metrics, f"{self.stage}/{name}")[1]

    def base_ci(self, name: str) -> float | None:
        return stats.mean_ci(self.metrics, f"baseline/{name}")[1]

    @property
    def seeds(self) -> list[int]:
        """The seeds the metrics are over (empty when the run's seed is unknown)."""
        per_seed = stats.per_seed(self.metrics)
        return sorted(per_seed) if per_seed else [] if self.seed is None else [self.seed]

    @property
    def n_seeds(self) -> int:
        return stats.repeats(self.metrics)


# ----------------------------------------------------------------------------- selecting runs


def _ratio(prune: str, value: Any) -> float:
    return 0.0 if prune == "none" or value in (None, "None") else float(value)


def _quant(name: str, weight_bits: Any, act_bits: Any) -> str:
    """``qat-w4a8`` for QAT (bit widths differ between runs), the mode's name otherwise."""
    return f"qat-w{weight_bits}a{act_bits}" if name == "qat" else name


def records_from_mlflow(runs: list[dict[str, Any]]) -> list[Record]:
    """Records of the experiment runs among MLflow runs (sweep parents and reports skipped)."""
    records = []
    for run in runs:
        tags, metrics = run["tags"], run["metrics"]
        if "tinyexp.arch" not in tags or "baseline/params" not in metrics:
            continue
        prune, params = tags.get("tinyexp.prune", "none"), run["params"]
        records.append(Record(
            name=run["name"], dataset=tags.get("tinyexp.dataset", "?"), arch=tags["tinyexp.arch"],
            prune=prune, ratio=_ratio(prune, params.get("prune.ratio")),
            quant=_quant(tags.get("tinyexp.quant", "none"), params.get("quant.weight_bits"),
                         params.get("quant.act_bits")),
            metrics=metrics, run_id=run["run_id"], seed=_seed(params.get("seed")),
            settings=run_settings(params)))
    return records


def _seed(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def records_from_dir(sweep_dir: Path) -> tuple[list[Record], list[str]]:
    """Records read from a multirun folder's job folders (``metrics.json`` + ``config.yaml``).

    Returns the records and the job folders that hold no metrics (failed or unfinished jobs).
    """
    from omegaconf import OmegaConf

    from tinyexp.config import describe, option_name
    from tinyexp.tracking import flatten

    records, missing = [], []
    # Hydra gives every job folder a .hydra/; our config.yaml appears once the job finishes.
    jobs = [p for p in Path(sweep_dir).iterdir()
            if p.is_dir() and ((p / ".hydra").is_dir() or (p / "config.yaml").is_file())]
    for job in sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit()
                                           else 0, p.name)):
        if not (job / "metrics.json").is_file() or not (job / "config.yaml").is_file():
            missing.append(job.name)
            continue
        cfg = OmegaConf.load(job / "config.yaml")
        metrics = {k: (math.nan if v is None else float(v))
                   for k, v in json.loads((job / "metrics.json").read_text()).items()}
        # a stage group left out (none) is null in the job's config
        prune, quant = cfg.get("prune") or {}, cfg.get("quant") or {}
        records.append(Record(
            name=describe(cfg), dataset=cfg.dataset.name, arch=cfg.arch.name,
            prune=option_name(cfg, "prune"),
            ratio=_ratio(option_name(cfg, "prune"), prune.get("ratio")),
            quant=_quant(option_name(cfg, "quant"), quant.get("weight_bits"),
                         quant.get("act_bits")),
            metrics=metrics, seed=_seed(cfg.get("seed")),
            settings=run_settings(flatten(OmegaConf.to_container(cfg, resolve=True)))))
    return records, missing


def sweep_parent(tracking_uri: str | None, experiment: str,
                 sweep: str) -> tuple[str, str, Path | None]:
    """The MLflow parent run id of a multirun (its jobs hang under it), a label for it, and
    its folder when that is on this machine.

    ``sweep`` is a multirun folder (it holds the id of its MLflow parent run) or ``latest``.
    """
    from tinyexp import tracking

    if sweep == "latest":
        parents = tracking.find_runs(tracking_uri, experiment, "tags.`tinyexp.role` = 'sweep'")
        if not parents:
            raise ReportError(f"--sweep: no multirun in MLflow experiment {experiment!r}")
        parent = parents[-1]
        folder = Path(parent["tags"].get("tinyexp.sweep_dir", ""))
        return parent["run_id"], parent["name"], folder if folder.name and folder.is_dir() \
            else None
    folder = Path(sweep)
    id_file = folder / ".mlflow_parent_run_id"
    if not id_file.is_file():
        raise ReportError(f"--sweep: {folder} is not a multirun folder logged to MLflow "
                          "(no .mlflow_parent_run_id in it); pass a folder under multirun/, "
                          "or 'latest'")
    label = f"{folder.resolve().parent.name}/{folder.resolve().name}"  # also for "sweep" or "."
    return id_file.read_text().strip(), label, folder


def tag_filter(tags: Sequence[str]) -> str:
    """``["tinyexp.arch=cnn"]`` -> an MLflow filter string (clauses joined by AND)."""
    clauses = []
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReportError(f"--tag: expected KEY=VALUE, got {item!r}")
        clauses.append(f"tags.`{key}` = '{value}'")
    return " and ".join(clauses)


# ----------------------------------------------------------------------------- the table


def task_metrics(records: list[Record], requested: Sequence[str] | None = None) -> list[str]:
    """The task metrics to report: ``requested``, else f1 and mse (anomaly) or accuracy."""
    have = {name for r in records for name in ALL_TASK_METRICS if r.final(name) is not None}
    if requested:
        for name in requested:
            if name not in have:
                raise ReportError(f"--metric: {name!r} is not measured by the selected runs; "
                                  f"allowed: {', '.join(m for m in ALL_TASK_METRICS if m in have)}")
        return list(requested)
    return [m for m in ("f1", "mse", "accuracy") if m in have] or sorted(have)[:1]


def quant_rank(quant: str) -> tuple[int, str]:
    mode = quant.split("-", 1)[0]  # qat-w4a8 ranks with qat
    return (_QUANT_ORDER.index(mode) if mode in _QUANT_ORDER else len(_QUANT_ORDER), quant)


def sort_key(record: Record) -> tuple:
    return record.dataset, record.arch, record.ratio, quant_rank(record.quant), record.name


def _quantities(values: dict[str, float], stage: str,
                metrics: Sequence[str]) -> dict[str, float | None]:
    """The numbers of one row for one seed: each value next to its baseline and its change."""
    out: dict[str, float | None] = {}
    for name in metrics:
        base, value = values.get(f"baseline/{name}"), values.get(f"{stage}/{name}")
        out.update({f"baseline_{name}": base, name: value,
                    f"{name}_delta": changes.delta(base, value)})
    for key, _ in COSTS:
        base, value = values.get(f"baseline/{key}"), values.get(f"{stage}/{key}")
        out.update({f"baseline_{key}": base, key: value,
                    f"{key}_reduction_pct": changes.reduction_pct(base, value)})
    return out


def table_rows(records: list[Record], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row of raw numbers per configuration (runs that differ only by seed merged, see
    :mod:`tinyexp.report.seeds`): the CSV, and what the other formats print.

    Next to each value: ``<metric>_delta`` (stage - baseline) for task metrics and
    ``<cost>_reduction_pct`` (positive = smaller or faster) for costs, against the run's own
    float baseline. Over several seeds every number is the mean over the seeds where it is
    finite, each change computed per seed against that seed's baseline, and each has a
    ``_ci95`` column (half-width of the 95% interval, t-distribution; empty for one seed);
    ``n_seeds`` and ``seeds`` say which seeds, ``run_id`` holds the runs' ids.
    """
    rows = []
    for r in sorted(merge_seeds(records), key=sort_key):
        seeds = stats.per_seed(r.metrics) or {0: r.metrics}
        numbers = stats.aggregate({s: _quantities(v, r.stage, metrics) for s, v in seeds.items()})
        row: dict[str, Any] = {"run": r.name, "dataset": r.dataset, "arch": r.arch,
                               "prune": r.prune, "ratio": r.ratio, "quant": r.quant,
                               "stage": r.stage, "n_seeds": r.n_seeds,
                               "seeds": " ".join(map(str, r.seeds))}
        for key in _quantities({}, r.stage, metrics):
            row[key], row[f"{key}_ci95"] = stats.mean_ci(numbers, key)
        row["run_id"] = r.run_id
        rows.append(row)
    return rows
