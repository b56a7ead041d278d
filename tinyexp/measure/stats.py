"""Statistics over seeds: one configuration run with several seeds, summarised per metric.

A single seed is noise (F1 of the float CNN baseline over seeds 0-4: 0.696, 0.855, 0.659,
0.586, 0.826), so a repeated run reports each metric as the mean over its seeds with the
half-width of its 95% confidence interval (Student t, n - 1 degrees of freedom).

:func:`aggregate` turns ``{seed: flat metrics}`` into one flat dict (what a repeated run logs):

* ``<key>``: the mean over the seeds whose value is finite;
* ``<key>_sd``, ``<key>_ci95``: sample standard deviation and CI half-width, when at least two
  seeds have a finite value (counts identical across seeds get 0);
* ``<key>_n``: how many seeds the mean is over, only when that is fewer than ``repeats``
  (a seed missing the key, or NaN there);
* ``seeds/<seed>/<key>``: each seed's own value; ``repeats``: the number of seeds.

:func:`per_seed` reads the per-seed values back; :func:`mean_ci` is what displays print.
scipy loads on the first interval computed, not on import.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from functools import lru_cache
from numbers import Real

REPEATS = "repeats"
SEEDS = "seeds/"
# Suffixes aggregate adds; a key already ending in one gets no spread of its own.
SPREAD_SUFFIXES = ("_sd", "_ci95")


def note(repeats: int) -> str:
    """What ``a ± b`` means, said under every display of a repeated run."""
    return f"mean ± 95% CI over {repeats} seeds (t-distribution)"


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if _is_number(v) and math.isfinite(v)]


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


@lru_cache(maxsize=64)
def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def ci95_halfwidth(values: Iterable[float | None]) -> float | None:
    """Half-width of the 95% confidence interval of the mean of ``values``:
    ``t(0.975, n - 1) * sd / sqrt(n)``, sd the sample standard deviation (ddof=1).

    None, NaN and infinite values are left out; None when fewer than two remain.
    """
    finite = _finite(values)
    n = len(finite)
    if n < 2:
        return None
    return t975(n - 1) * statistics.stdev(finite) / math.sqrt(n)


def aggregate(per_seed: dict[int, dict[str, float | None]]) -> dict[str, float]:
    """One flat dict of metrics from the flat metrics of each seed (see the module doc).

    A key missing or not finite in some seeds is averaged over the others (and gets
    ``<key>_n``); in none of them, its mean is NaN, as a single run would log it. Values that
    are not numbers are left out.

    Args:
        per_seed: seed -> that seed's ``stage/metric`` values.

    Returns:
        Means, spreads, per-seed values and ``repeats``, in the order keys first appear.
    """
    keys = dict.fromkeys(k for metrics in per_seed.values() for k, v in metrics.items()
                         if _is_number(v) or v is None)
    out: dict[str, float] = {}
    for key in keys:
        finite = _finite(m.get(key) for m in per_seed.values())
        n = len(finite)
        out[key] = statistics.fmean(finite) if finite else math.nan
        if n >= 2 and not key.endswith(SPREAD_SUFFIXES):
            out[f"{key}_sd"] = statistics.stdev(finite)
            out[f"{key}_ci95"] = ci95_halfwidth(finite)
        if n < len(per_seed):
            out[f"{key}_n"] = n
    out[REPEATS] = len(per_seed)
    for seed, metrics in per_seed.items():
        out.update({f"{SEEDS}{seed}/{k}": math.nan if v is None else float(v)
                    for k, v in metrics.items() if k in keys})
    return out


def per_seed(metrics: dict[str, float]) -> dict[int, dict[str, float]]:
    """The per-seed values ``seeds/<seed>/<key>`` of an aggregated dict, as
    ``{seed: {key: value}}`` (empty for a single run)."""
    out: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith(SEEDS):
            seed, _, name = key[len(SEEDS):].partition("/")
            out.setdefault(int(seed), {})[name] = value
    return out


def repeats(metrics: dict[str, float]) -> int:
    """How many seeds a flat dict of metrics is over: ``repeats``, else the seeds of its
    ``seeds/<seed>/...`` values, else 1 (a single run)."""
    value = metrics.get(REPEATS)
    if value is not None and math.isfinite(value):
        return int(value)
    return len(per_seed(metrics)) or 1


def mean_ci(metrics: dict[str, float], key: str) -> tuple[float | None, float | None]:
    """``(mean, ci95 half-width)`` of ``key`` in a flat dict: None for a value that is missing
    or not finite, and for the interval of a single run or of a key with fewer than two
    finite seeds."""
    value, ci = metrics.get(key), metrics.get(f"{key}_ci95")
    value = value if value is not None and math.isfinite(value) else None
    ci = ci if value is not None and ci is not None and math.isfinite(ci) else None
    return value, ci
