"""Checks of the sweeper's settings, all made before the study is opened: types and ranges
(``check_count``, ``check_seconds``, ...), directions, objectives, constraints, the sampler
and pruner, the storage URL, dotted paths of functions; the error they raise
(``_SettingsError``). ``user_key`` and ``probe_message`` name, in an error, the key the user
typed.

The sweeper's config schema types its settings ``Any``: a value that comes through an
interpolation (``n_trials: ${search.n_trials}``) then reaches these checks, which name the key,
instead of failing inside Hydra's instantiate with a traceback.
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import importlib.util
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from hydra_plugins.hydra_optuna5_sweeper._results import Constraint
from hydra_plugins.hydra_optuna5_sweeper._util import error_text, redact

# `${search.n_trials}`, `${oc.select:seed,null}`: a setting taken from another key.
_INTERPOLATION = re.compile(r"^\$\{(?:oc\.select:)?\s*([A-Za-z_][\w.]*)\s*(?:,[^}]*)?\}$")

# ----------------------------------------------------------------------------- settings


class _SettingsError(ValueError):
    """A bad sweeper setting; ``setting`` is its dotted path under ``hydra.sweeper``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"hydra.sweeper.{key}: {message}")
        self.setting = key
        self.message = message


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def check_count(key: str, value: Any, low: int, what: str = "") -> int:
    """``value`` as an int >= ``low``, else a _SettingsError naming ``key``."""
    if not _is_int(value) or value < low:
        raise _SettingsError(key, f"must be an int >= {low}{what}, got {value!r}")
    return value


def check_seconds(key: str, value: Any) -> Optional[int]:
    if value is not None and (not _is_int(value) or value < 1):
        raise _SettingsError(key, f"must be null or an int >= 1 (seconds), got {value!r}")
    return value


def check_heartbeat(interval: Any, grace: Any) -> None:
    check_seconds("heartbeat_interval", interval)
    check_seconds("grace_period", grace)
    # A grace period within one interval would fail trials whose process is alive and beating.
    if interval is not None and grace is not None and grace <= interval:
        raise _SettingsError("grace_period", f"must be longer than heartbeat_interval "
                                             f"({interval} s), got {grace}")


def check_flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _SettingsError(key, f"must be true or false, got {value!r}")
    return value


def check_study_name(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise _SettingsError("study_name", f"must be null (the sweep folder's name) or a "
                                           f"non-empty name, got {value!r}")
    return str(value)


def _directions(direction: Any) -> List[str]:
    # a name, hydra-optuna-sweeper's Direction enum, or a list of either
    items = list(direction) if isinstance(direction, (list, tuple)) else \
        [direction] if isinstance(direction, str) or hasattr(direction, "name") else []
    names = [str(getattr(d, "name", d)).lower() for d in items]
    if not names or any(n not in ("minimize", "maximize") for n in names):
        raise _SettingsError("direction", f"must be minimize, maximize or a list of them, "
                                          f"got {direction!r}")
    return names


def _metric_name(key: str, name: Any, allow_objective: bool) -> str:
    ok = isinstance(name, str) and (
        (allow_objective and name == "objective") or
        (name.count("/") >= 1 and all(part.strip() for part in name.split("/"))))
    if not ok:
        allowed = "'objective', " if allow_objective else ""
        raise _SettingsError(key, f"must be {allowed}'final/<metric>' or '<stage>/<metric>' "
                                  f"(e.g. final/f1, final/flash_bytes), got {name!r}")
    return name


def check_objectives(objectives: Any, directions: List[str]) -> List[str]:
    items = [objectives] if isinstance(objectives, str) else \
        list(objectives) if isinstance(objectives, (list, tuple)) else None
    if items is None:
        raise _SettingsError("objectives", f"must be a list of metrics, one per direction, "
                                           f"got {objectives!r}")
    if len(items) != len(directions):
        raise _SettingsError("objectives", f"one per direction ({len(directions)}: "
                                           f"{', '.join(directions)}), got {items}")
    return [_metric_name(f"objectives.{i}", name, True) for i, name in enumerate(items)]


def _constraints(items: Any) -> List[Constraint]:
    if items is not None and not isinstance(items, (list, tuple)):
        raise _SettingsError("constraints", f"must be a list of {{metric: ..., max: ...}} "
                                            f"entries, got {items!r}")
    out = []
    for i, item in enumerate(items or []):
        if not isinstance(item, Mapping) or "metric" not in item or \
                sum(k in item for k in ("max", "min")) != 1 or \
                set(item) - {"metric", "max", "min"}:
            raise _SettingsError("constraints", f"each entry is {{metric: ..., max: ...}} or "
                                                f"{{metric: ..., min: ...}}, got {item!r}")
        metric = _metric_name(f"constraints.{i}.metric", item["metric"], False)
        side = "max" if "max" in item else "min"
        bound = item[side]
        if isinstance(bound, str):
            try:
                bound = float(bound)
            except ValueError:
                pass
        if not _is_number(bound):
            raise _SettingsError(f"constraints.{i}.{side}", f"the bound of {metric} must be a "
                                                            f"finite number, got {item[side]!r}")
        out.append(Constraint(metric, float(bound), upper=side == "max"))
    return out


# ----------------------------------------------------------------------------- sampler, pruner

# key -> (kind, low, high): the arguments of the samplers and pruners of ``_config``.
_ARGUMENTS: Dict[str, Tuple[str, float, float]] = {
    "seed": ("int?", 0, math.inf),
    "n_startup_trials": ("int", 0, math.inf),
    "constant_liar": ("bool", 0, 0),
    "population_size": ("int", 2, math.inf),
    "mutation_prob": ("prob?", 0, 1),
    "crossover_prob": ("prob", 0, 1),
    "swapping_prob": ("prob", 0, 1),
    "n_warmup_steps": ("int", 0, math.inf),
    "interval_steps": ("int", 1, math.inf),
    "min_resource": ("int", 1, math.inf),
    "max_resource": ("auto", 1, math.inf),
    "reduction_factor": ("int", 2, math.inf),
}


def _check_argument(key: str, name: str, value: Any) -> None:
    kind, low, high = _ARGUMENTS[name]
    if kind.endswith("?") and value is None:
        return
    if kind == "auto" and value == "auto":
        return
    if kind == "bool":
        check_flag(key, value)
    elif kind.startswith("prob"):
        if not _is_number(value) or not low <= value <= high:
            raise _SettingsError(key, f"must be a number in [0, 1]"
                                      f"{' or null' if kind.endswith('?') else ''}, got {value!r}")
    elif not _is_int(value) or value < low:
        extra = " or null" if kind.endswith("?") else " or auto" if kind == "auto" else ""
        raise _SettingsError(key, f"must be an int >= {int(low)}{extra}, got {value!r}")


def check_component(key: str, cfg: Any, what: str) -> None:
    """A sampler's or pruner's config: its arguments' types and ranges, then Optuna builds
    it once (it checks the rest; nothing is stored)."""
    if cfg is None:
        return
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("_target_"), str):
        raise _SettingsError(key, f"must be a {what} config with a _target_ (choose one with "
                                  f"hydra/sweeper/{key}=...), got {cfg!r}")
    for name, value in cfg.items():
        if name in _ARGUMENTS:
            _check_argument(f"{key}.{name}", name, value)
    from hydra.utils import get_object, instantiate

    try:
        get_object(cfg["_target_"])
    except Exception as err:
        raise _SettingsError(f"{key}._target_", f"cannot import {cfg['_target_']!r} "
                                                f"({_first_line(err)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental arguments
            instantiate(dict(cfg))
    except Exception as err:
        raise _SettingsError(key, f"Optuna rejects the {what}: {_first_line(err)}") from None
    # Optuna imports these only when the sampler first samples, after the first jobs ran.
    missing = [m for m in _NEEDS.get(cfg["_target_"], ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise _SettingsError(key, f"{cfg['_target_']} needs {' and '.join(missing)}, not "
                                  f"installed: pip install {' '.join(missing)}")


_NEEDS = {"optuna.samplers.GPSampler": ("torch", "scipy"),
          "optuna.samplers.QMCSampler": ("scipy",),
          "optuna.samplers.CmaEsSampler": ("cmaes",)}


def _first_line(err: BaseException) -> str:
    cause = err.__cause__ or err  # Hydra wraps the constructor's own error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


# ----------------------------------------------------------------------------- storage


def check_storage(url: Any) -> None:
    """The study's storage: null, an SQLAlchemy URL whose driver is installed, or the path of
    an Optuna journal file, whose folder can be created. Nothing is created or opened."""
    if url is None:
        return
    if not isinstance(url, str) or not url.strip():
        raise _SettingsError("storage", f"must be null (in memory), a database URL or a "
                                        f"journal file path, got {url!r}")
    shown = redact(url)
    if "://" not in url:  # an Optuna journal file
        _check_writable(Path(url), "journal file")
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise _SettingsError("storage", f"{shown!r} is not a database URL SQLAlchemy knows: "
                                        f"use sqlite:///path/optuna.db, postgresql://... or "
                                        f"mysql://..., or the path of a journal file (no ://)"
                             ) from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        driver = getattr(err, "name", None) or parsed.get_driver_name()
        raise _SettingsError("storage", f"the {parsed.get_backend_name()} driver {driver!r} is "
                                        f"not installed, so {shown} cannot be opened; install "
                                        f"it, or use sqlite:///... or a journal file") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise _SettingsError("storage", f"{shown} is an in-memory database the jobs cannot "
                                            f"share; give a file, e.g. sqlite:///optuna.db")
        _check_writable(Path(parsed.database), "SQLite database")


def _check_writable(path: Path, what: str) -> None:
    if path.is_dir():
        raise _SettingsError("storage", f"{path} is a folder, not a {what}")
    folder = path.absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise _SettingsError("storage", f"cannot create {path}: {existing} is a file")
    try:  # os.access says yes to root everywhere: try it
        os.rmdir(tempfile.mkdtemp(prefix=".optuna5-sweeper-", dir=existing))
    except OSError as err:
        raise _SettingsError("storage", f"cannot create the {what} {path}: {existing} is not "
                                        f"writable ({err.strerror})") from None


# ----------------------------------------------------------------------------- error keys


def user_key(raw_settings: Any, setting: str) -> str:
    """What the user typed for a setting: the key it interpolates (``search.n_trials``,
    ``target.flash_bytes``), else ``hydra.sweeper.<setting>``.

    Args:
        raw_settings: the sweeper's config node, unresolved.
        setting: the setting's dotted path under ``hydra.sweeper`` (``constraints.0.max``).
    """
    node: Any = raw_settings
    for part in setting.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return f"hydra.sweeper.{setting}"
    found = _INTERPOLATION.match(node) if isinstance(node, str) else None
    return found.group(1) if found else f"hydra.sweeper.{setting}"


def probe_message(err: Exception, point: Mapping[str, Any], varied: Optional[str]) -> str:
    """``<key>: <what is wrong>`` for a search-space point whose job config is bad."""
    from hydra.errors import HydraException

    text = error_text(err)
    key = getattr(err, "key", None)  # a validator's error that names its key (`.key`)
    if isinstance(key, str) and str(err).startswith(f"{key}: "):
        return text.split(": ", 1)[1]
    if isinstance(err, HydraException):  # composing failed: name the override it names
        message = text.split(": ", 1)[1]
        missing = re.search(r"Could not find '([^']+)/([^']+)'", message)
        if missing and getattr(err, "options", None):
            return (f"{missing[1]}: unknown option {missing[2]!r}; allowed: "
                    f"{', '.join(err.options)}")
        named = [k for k in point if re.search(rf"\b{re.escape(k)}\b", message)]
        key = named[0] if named else varied or "hydra.sweeper.params"
        return f"{key}: {message}"
    # Another validator: keep its `key: message` when it has one.
    message = text.split(": ", 1)[1] if re.match(r"^\w+: [\w.\[\]/-]+: ", text) else text
    return message
