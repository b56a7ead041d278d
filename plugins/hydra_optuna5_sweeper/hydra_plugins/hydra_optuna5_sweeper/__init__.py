"""hydra-optuna5-sweeper: a Hydra sweeper running an Optuna (>= 4) study, a drop-in for
hydra-optuna-sweeper (``hydra/sweeper: optuna``, or ``optuna5`` next to it) with pruning,
constraints, resuming, and jobs that return a ``JobResult``.

The public names load on first use (``redact`` and ``storage_url`` are standard library only:
an app can use them before importing Hydra); Hydra's plugin scan imports ``optuna_sweeper``,
which registers the configs.
"""

from typing import Any

from hydra_plugins.hydra_optuna5_sweeper._util import redact as redact
from hydra_plugins.hydra_optuna5_sweeper._util import storage_url as storage_url

__version__ = "0.1.0"

# public name -> the module that defines it
_WHERE = {
    **dict.fromkeys(["CmaEsSamplerConfig", "Direction", "GPSamplerConfig", "GridSamplerConfig",
                     "HyperbandPrunerConfig", "MedianPrunerConfig", "MOTPESamplerConfig",
                     "NopPrunerConfig", "NSGAIISamplerConfig", "OptunaSweeperConf",
                     "QMCSamplerConfig", "RandomSamplerConfig", "SamplerConfig",
                     "TPESamplerConfig"], "_config"),
    "Constraint": "_results",
    "JobResult": "_results",
    "SweeperSettings": "_settings",
    "OptunaSweeper": "optuna_sweeper",
}

__all__ = sorted([*_WHERE, "redact", "storage_url"])


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted([*globals(), *_WHERE])
