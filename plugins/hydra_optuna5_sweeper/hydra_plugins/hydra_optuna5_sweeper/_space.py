"""The search space: Hydra sweep overrides (``params`` of the sweeper config and the command
line) turned into Optuna distributions (``build_search_space``, ``distribution_from_override``),
and a point of the space turned back into Hydra overrides (``SearchSpace.overrides``).
A sweep that cannot become a distribution raises ``SpaceError`` naming where it was written.
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.errors import HydraException


class SpaceError(ValueError):
    """A search-space entry that is not a sweep Optuna can run; ``key`` is where the user
    wrote it (``prune.ratio`` on the command line, ``hydra.sweeper.params.prune.ratio``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

# ----------------------------------------------------------------------------- search space


def _override_string(value: Any) -> str:
    """A parsed Hydra value back in override syntax (lists stay lists, strings are escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return Override._get_value_element_as_str(value)


def distribution_from_override(override: Override) -> Tuple[Any, Optional[Dict[Any, str]]]:
    """The Optuna distribution of one sweep override, as hydra-optuna-sweeper makes it.

    Returns:
        The distribution, and for a categorical one the override string of each choice
        (``choice([32,16],[16,8])`` has the choices ``"[32,16]"``, ``"[16,8]"``, which must go
        back to Hydra as lists, not as quoted strings).
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    def categorical(values: Sequence[Any]) -> Tuple[Any, Dict[Any, str]]:
        strings: Dict[Any, str] = {}
        for value in values:
            # Optuna stores str, int, float, bool or None; anything else by its override text.
            key = value if value is None or isinstance(value, (str, int, float, bool)) \
                else Transformer.encode(value)
            strings[key] = _override_string(value)
        return CategoricalDistribution(list(strings)), strings

    value = override.value()
    if override.is_choice_sweep():
        return categorical(list(override.sweep_iterator(transformer=Transformer.identity)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if value.shuffle:
            return categorical(list(override.sweep_iterator(transformer=Transformer.identity)))
        # As hydra-optuna-sweeper: Optuna's bounds include `stop` (Hydra's range, like
        # Python's, excludes it), and a float anywhere makes it a float range.
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(float(value.start), float(value.stop),
                                     step=float(value.step) if value.step else None), None
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step)), None
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):  # int(interval(a, b))
            return IntDistribution(value.start, value.end, log=log_scale), None
        return FloatDistribution(float(value.start), float(value.end), log=log_scale), None
    raise ValueError(f"not a sweep the Optuna sweeper supports: {override.input_line}; use "
                     f"interval(a, b), int(interval(a, b)), range(a, b), choice(a, b) or "
                     f"tag(log, interval(a, b))")


def grid_choices(distribution: Any) -> List[Any]:
    """The grid sampler's values for one distribution, as hydra-optuna-sweeper lists them:
    a range's values without its stop, as Hydra's range has them."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    step = getattr(distribution, "step", None)
    if step is None:
        raise ValueError("the grid sampler needs finite choices: choice(...) or range(...), "
                         "not an interval")
    n_items = int((distribution.high - distribution.low) // step)
    return [distribution.low + i * step for i in range(n_items)]


@dataclass
class SearchSpace:
    """What the trials vary (Optuna distributions) and what every job gets as is."""

    distributions: Dict[str, Any]
    choice_strings: Dict[str, Dict[Any, str]]
    fixed: List[str]

    def overrides(self, params: Mapping[str, Any]) -> List[str]:
        """Hydra overrides for one point of the space."""
        out = list(self.fixed)
        for name, value in params.items():
            strings = self.choice_strings.get(name)
            if strings is not None and value in strings:
                out.append(f"{name}={strings[value]}")
            elif isinstance(value, float):
                out.append(f"{name}={value!r}")
            else:
                out.append(f"{name}={_override_string(value)}")
        return out


def _param_line(key: str, value: Any) -> str:
    """One ``params`` entry as an override line (a YAML value may be a number, list or null)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    return f"{key}={value}"


def build_search_space(params: Optional[Mapping[str, Any]], arguments: Sequence[str],
                       config_loader: Any = None,
                       origins: Optional[Mapping[str, str]] = None) -> SearchSpace:
    """``params`` of the sweeper config, then the command line (which wins for the same key).

    Args:
        origins: where each key of ``params`` was written, for errors (default
            ``hydra.sweeper.params.<key>``); a command-line entry is named by its own key.

    Raises:
        SpaceError: an entry does not parse, or is a sweep Optuna cannot run.
    """
    entries: List[Tuple[str, str]] = []
    for key, value in (params or {}).items():
        where = (origins or {}).get(key, f"hydra.sweeper.params.{key}")
        if not isinstance(key, str) or not key.strip():
            raise SpaceError(where, f"the key must be a config key, got {key!r}")
        if isinstance(value, Mapping):
            raise SpaceError(where, f"must be a sweep such as interval(0.1, 0.9) or choice(a, b) "
                                    f"or a plain value, got the mapping {dict(value)!r}")
        entries.append((where, _param_line(key, value)))
    entries += [("", str(line)) for line in arguments]
    parser = OverridesParser.create(config_loader=config_loader)
    by_key: Dict[str, Override] = {}
    where_by_key: Dict[str, str] = {}
    for where, line in entries:
        try:
            override = parser.parse_overrides([line])[0]
        except HydraException as err:
            first = next((x.strip() for x in str(err).splitlines() if x.strip()), str(err))
            raise SpaceError(where or line.split("=", 1)[0], f"cannot parse {line!r}: {first}"
                             ) from None
        key = override.get_key_element()
        by_key.pop(key, None)  # keep command-line order for the rest
        by_key[key] = override
        where_by_key[key] = where or key
    distributions: Dict[str, Any] = {}
    choice_strings: Dict[str, Dict[Any, str]] = {}
    fixed: List[str] = []
    for key, override in by_key.items():
        if override.is_sweep_override():
            try:
                distribution, strings = distribution_from_override(override)
            except ValueError as err:  # Optuna's own checks too: low > high, log of 0, ...
                sweep = str(override.input_line).split("=", 1)[-1]
                raise SpaceError(where_by_key[key], f"cannot search {sweep}: "
                                                    f"{str(err).splitlines()[0]}") from None
            distributions[key] = distribution
            if strings is not None:
                choice_strings[key] = strings
        else:
            fixed.append(str(override.input_line))
    return SearchSpace(distributions, choice_strings, fixed)


def collect_params(params: Any, group_params: Any, choices: Mapping[str, Any],
                   group_options: Callable[[str], List[str]]
                   ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """``params``, plus the ``group_params`` of the options this sweep composed; and where
    each was written (for errors).

    Args:
        choices: ``hydra.runtime.choices``, the option of each config group.
        group_options: a group's options (empty when unknown).

    Raises:
        _SettingsError: naming the setting that has the wrong shape.
    """
    from hydra_plugins.hydra_optuna5_sweeper._checks import _SettingsError

    if params is not None and not isinstance(params, Mapping):
        raise _SettingsError("params", f"must be a mapping of config keys to sweeps, e.g. "
                                       f"{{x: interval(0.1, 0.9)}}, got {params!r}")
    out = dict(params or {})
    origins = {key: f"hydra.sweeper.params.{key}" for key in out}
    if group_params is not None and not isinstance(group_params, Mapping):
        raise _SettingsError("group_params", f"expected {{group: {{option: {{key: sweep}}}}}}, "
                                             f"got {group_params!r}")
    for group, by_option in (group_params or {}).items():
        where = f"group_params.{group}"
        if not isinstance(by_option, Mapping) or \
                not all(v is None or isinstance(v, Mapping) for v in by_option.values()):
            raise _SettingsError(where, f"expected {{option: {{key: sweep}}}}, got "
                                        f"{by_option!r}")
        if group not in choices:
            raise _SettingsError(where, f"{group!r} is not a config group of this app")
        known = group_options(group)
        for option in by_option:
            if known and option not in known:
                raise _SettingsError(f"{where}.{option}", f"{group} has no option {option!r}; "
                                                          f"options: {', '.join(sorted(known))}")
        chosen = choices.get(group)
        extra = by_option.get(chosen) or {}
        out.update(extra)
        origins.update({key: f"hydra.sweeper.{where}.{chosen}.{key}" for key in extra})
    return out, origins
