"""The search space: Hydra sweep overrides (``params`` of the sweeper config and the command
line) turned into Optuna distributions (``build_search_space``, ``distribution_from_override``),
and a point of the space turned back into Hydra overrides (``SearchSpace.overrides``).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)

# ----------------------------------------------------------------------------- search space


def _override_string(value: Any) -> str:
    """A parsed Hydra value back in override syntax (lists stay lists, strings are escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return Override._get_value_element_as_str(value)


def distribution_from_override(override: Override) -> Tuple[Any, Optional[Dict[Any, str]]]:
    """The Optuna distribution of one sweep override, as hydra-optuna-sweeper does it.

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
        values = list(override.sweep_iterator(transformer=Transformer.identity))
        if not values:
            raise ValueError(f"{override.input_line}: empty range")
        if value.shuffle or len(values) == 1:
            return categorical(values)
        low, high, step = min(values), max(values), abs(value.step)
        # Hydra's range, like Python's, excludes its stop value; Optuna's bounds are inclusive.
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
            return IntDistribution(int(low), int(high), step=int(step)), None
        return FloatDistribution(float(low), float(high), step=float(step)), None
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):  # int(interval(a, b))
            return IntDistribution(value.start, value.end, log=log_scale), None
        return FloatDistribution(float(value.start), float(value.end), log=log_scale), None
    raise ValueError(f"{override.input_line}: not a sweep the Optuna sweeper supports")


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


def build_search_space(params: Optional[Mapping[str, Any]], arguments: Sequence[str],
                       config_loader: Any = None) -> SearchSpace:
    """``params`` of the sweeper config, then the command line (which wins for the same key)."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(lines)
    by_key: Dict[str, Override] = {}
    for override in parsed:
        by_key.pop(override.get_key_element(), None)  # keep command-line order for the rest
        by_key[override.get_key_element()] = override
    distributions: Dict[str, Any] = {}
    choice_strings: Dict[str, Dict[Any, str]] = {}
    fixed: List[str] = []
    for key, override in by_key.items():
        if override.is_sweep_override():
            distribution, strings = distribution_from_override(override)
            distributions[key] = distribution
            if strings is not None:
                choice_strings[key] = strings
        else:
            fixed.append(str(override.input_line))
    return SearchSpace(distributions, choice_strings, fixed)
