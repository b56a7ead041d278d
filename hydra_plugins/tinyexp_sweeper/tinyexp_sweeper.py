"""Hydra's basic sweeper (grid over ``a=1,2 b=x,y``), checking every job's config up front.

Hydra composes a job's config only when that job starts, so a bad value in the fifth point of a
sweep would surface after four trainings. This sweeper composes and validates all points
first and stops with one line naming the bad key, before any job runs.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser


@dataclass
class TinyexpSweeperConf:
    _target_: str = "hydra_plugins.tinyexp_sweeper.tinyexp_sweeper.TinyexpSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


# Hydra loads plugin modules outside sys.modules: no `from __future__ import annotations` here,
# or dataclass() cannot resolve the field types.
ConfigStore.instance().store(group="hydra/sweeper", name="tinyexp", node=TinyexpSweeperConf,
                             provider="tinyexp")


def validate_jobs(hydra_context: Any, config: Any, jobs: list[list[str]]) -> None:
    """Compose each job's config and validate it; exit with status 2 on the first bad one."""
    from tinyexp.config import ConfigError, validate

    for overrides in jobs:
        job_cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        try:
            validate(job_cfg)
        except ConfigError as err:
            where = " ".join(overrides) or "(defaults)"
            print(f"tinyexp: error: {err} [in sweep job: {where}]", file=sys.stderr)
            sys.exit(2)


class TinyexpSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]
        validate_jobs(self.hydra_context, self.config, jobs)
        try:
            return super().sweep(arguments)
        except Exception:
            # Hydra skips on_multirun_end when a job fails: show what the others measured.
            from tinyexp.report.callback import print_sweep_summary

            print_sweep_summary(Path(str(self.config.hydra.sweep.dir)))
            raise
