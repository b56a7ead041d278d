"""Runs that differ only by seed become one record: the mean of each metric, its 95% interval
and the per-seed values, as a run with ``repeats=N`` logs them (:mod:`tinyexp.measure.stats`).

A sweep ``-m seed=0,1,2,3,4`` and one run with ``repeats=5`` report the same way: one row and
one point with its interval. What a group pools is the per-seed values: a repeated run
contributes its ``seeds/<s>/...`` values, a single run its metrics under its seed; the same
seed twice in a group (a rerun) counts once, the later run's values.

Runs merge when their name, dataset, architecture, pruning, ratio and quantization are equal
and so is every config key (MLflow params, or the job's ``config.yaml``) except the seed,
``repeats`` and where the run logs or caches (:data:`IGNORED`): ``dataset.seed`` (the data
set) keeps runs apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from tinyexp.measure import stats

if TYPE_CHECKING:
    from tinyexp.report.runs import Record

# Config keys that say where a run logs or caches, or which seed it ran: not what it measured.
IGNORED = frozenset({"seed", "repeats", "cache_dir", "output_dir"})
IGNORED_PREFIXES = ("logger.", "hydra.")


def run_settings(params: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """The flat config a run's results depend on, without its seed: what runs merge by."""
    return tuple(sorted((key, str(value)) for key, value in params.items()
                        if key not in IGNORED and not key.startswith(IGNORED_PREFIXES)))


def _key(record: Record) -> tuple:
    return (record.name, record.dataset, record.arch, record.prune, record.ratio, record.quant,
            record.settings)


def seed_values(record: Record) -> dict[int | None, dict[str, float]]:
    """The record's metrics per seed: a repeated run's ``seeds/<s>/...`` values, else its own
    metrics under its seed (None when unknown)."""
    return stats.per_seed(record.metrics) or {record.seed: record.metrics}


def merge_seeds(records: Iterable[Record]) -> list[Record]:
    """One record per configuration: records that differ only by seed merged, in the order
    their first run comes; a configuration with one run keeps its record as it is.

    A merged record holds :func:`tinyexp.measure.stats.aggregate` of the pooled per-seed
    values, and the run ids of its runs separated by spaces.
    """
    groups: dict[tuple, list[Record]] = {}
    for record in records:
        groups.setdefault(_key(record), []).append(record)
    merged = []
    for members in groups.values():
        if len(members) == 1:
            merged.append(members[0])
            continue
        pooled: dict[int, dict[str, float]] = {}
        unknown = -1  # runs without a seed (hand-made records) each count as their own sample
        for record in members:
            for seed, values in seed_values(record).items():
                if seed is None:
                    seed, unknown = unknown, unknown - 1
                pooled[seed] = values
        run_ids = " ".join(r.run_id for r in members if r.run_id) or None
        merged.append(replace(members[0], metrics=stats.aggregate(dict(sorted(pooled.items()))),
                              run_id=run_ids, seed=None))
    return merged
