"""The end of a multirun: the compact table of its jobs, printed by a Hydra callback
(``hydra.callbacks.summary`` in ``conf/config.yaml``) or by the sweeper when a job failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from tinyexp.report.runs import records_from_dir, task_metrics
from tinyexp.report.tables import compact_table


class MultirunSummary(Callback):
    """Hydra callback: at the end of a multirun, print the compact table of its jobs."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        print_sweep_summary(Path(str(config.hydra.sweep.dir)))


def print_sweep_summary(sweep_dir: Path) -> None:
    """Print the compact table of a multirun folder's finished jobs (and name the others)."""
    if not sweep_dir.is_dir():
        return
    records, missing = records_from_dir(sweep_dir)
    if records:
        metric = task_metrics(records)[0]
        runs = f"{len(records)} run{'s' if len(records) != 1 else ''}"
        print(f"\n{runs} in {sweep_dir} (final stage; change vs own float baseline: "
              f"{metric} delta, costs percent smaller or larger)")
        print(compact_table(records, metric))
        print(f"full report: tinyexp-report --sweep {sweep_dir}", flush=True)
    if missing:
        print("jobs without results (failed, pruned by a search, or interrupted): "
              + ", ".join(missing), flush=True)
