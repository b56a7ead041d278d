"""Checks of the sweeper's settings: directions, constraints (``Constraint``), the error they
raise (``_SettingsError``), and ``_fmt`` for numbers in progress lines.
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

from dataclasses import dataclass
from typing import Any, List, Mapping

from tinyexp.summary import fmt_number

# ----------------------------------------------------------------------------- settings


@dataclass
class Constraint:
    """``metric <= max`` (or ``metric >= min``), told to Optuna as ``value - max <= 0``."""

    metric: str
    bound: float
    upper: bool = True

    @property
    def key(self) -> str:
        return self.metric if self.upper else f"{self.metric}>="

    def violation(self, value: float) -> float:
        return value - self.bound if self.upper else self.bound - value

    def describe(self, value: float) -> str:
        sign = "<=" if self.upper else ">="
        mark = "ok" if self.violation(value) <= 0 else "OVER" if self.upper else "UNDER"
        return f"{self.metric.split('/')[-1]} {_fmt(value)} {sign} {_fmt(self.bound)} {mark}"


class _SettingsError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"hydra.sweeper.{key}: {message}")


def _directions(direction: Any) -> List[str]:
    items = [direction] if isinstance(direction, str) else list(direction or [])
    names = [str(getattr(d, "name", d)).lower() for d in items]
    if not names or any(n not in ("minimize", "maximize") for n in names):
        raise _SettingsError("direction", f"must be minimize, maximize or a list of them, "
                                          f"got {direction!r}")
    return names


def _constraints(items: Any) -> List[Constraint]:
    out = []
    for item in items or []:
        if not isinstance(item, Mapping) or "metric" not in item or \
                sum(k in item for k in ("max", "min")) != 1:
            raise _SettingsError("constraints", f"each entry is {{metric: ..., max: ...}} or "
                                                f"{{metric: ..., min: ...}}, got {item!r}")
        bound = item.get("max", item.get("min"))
        try:
            bound = float(bound)
        except (TypeError, ValueError):
            raise _SettingsError("constraints", f"{item['metric']}: bound must be a number, "
                                                f"got {bound!r}") from None
        out.append(Constraint(str(item["metric"]), bound, upper="max" in item))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return fmt_number(value)

