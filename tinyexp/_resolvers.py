"""The OmegaConf resolvers of tinyexp's configs, registered when this module is imported (the
CLI imports it before Hydra composes a config).

- ``${tinyexp.now:<strftime pattern>}``: one instant per process (its first use), formatted, so
  the date and the time of a folder name always agree.
- ``${tinyexp.pid:}``: this process's id.

``conf/config.yaml`` names a job's folder ``outputs/<date>/<HH-MM-SS>-<microseconds>-<pid>``:
Hydra's ``${now:%H-%M-%S}`` alone is the same for every job started within one second, and
those jobs would write into one folder. No two live processes of a machine share a pid; the
microseconds also tell apart a pid reused within the second, or processes of two containers
writing to one disk.
"""

from __future__ import annotations

import os
from datetime import datetime

from omegaconf import OmegaConf

_instant: list[datetime] = []


def _now(pattern: str) -> str:
    if not _instant:
        _instant.append(datetime.now())
    return _instant[0].strftime(pattern)


# use_cache: Hydra copies cached values from the sweep's config into each job's config, so a
# job resolved in another process (a launcher's worker) still names the sweep's folder.
OmegaConf.register_new_resolver("tinyexp.now", _now, use_cache=True, replace=True)
OmegaConf.register_new_resolver("tinyexp.pid", os.getpid, use_cache=True, replace=True)
