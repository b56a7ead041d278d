"""Structured pruning criteria: ``prune=l1``, ``l2``, ``taylor``, ``fpgm``, ``random``.

Each criterion is a spec class naming a torch-pruning importance; the procedure is shared
(:class:`StructuredPrune`): prune ``ratio`` of every prunable group through torch-pruning's
dependency graph in ``steps`` steps, fine-tune after each, measure the result. How the ratio is
shared out among the groups is shared too: the same share of every group (the default), one
ranking over all groups (``global_ranking``), or shares per group set by hand or read from the
per-layer sensitivity analysis (``layer_ratios``). A new criterion is one subclass here plus one
YAML file in ``conf/prune/``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyexp.schemas import ConfigError, _require
from tinyexp.stages.base import Context, Stage

UNPRUNED = "(none)"  # the unpruned row of layer_sensitivity.csv (sensitivity.NO_GROUP)
UNCHANGED_TAG = "tinyexp.prune_unchanged"  # the groups that were meant to shrink and did not

log = logging.getLogger(__name__)


@dataclass
class StructuredPrune(Stage):
    """Remove whole channels, hidden units and head dimensions, ranked by ``importance()``.

    How many channels a group keeps: a group of ``width`` channels (dims per head for attention)
    pruned by ``r`` keeps ``floor(width * (1 - r))``, rounded down to a multiple of ``round_to``,
    and never fewer than the minimum: 1 channel, or ``round_to`` channels with ``round_to`` (so
    a width stays a multiple of it). So a larger ratio never keeps more, any ratio > 0 removes
    at least one channel of a group that can lose one, and no group is emptied. A group meant to
    shrink that keeps its width (1 channel wide, not wider than ``round_to``, left whole by
    global ranking) is counted in ``pruned/groups_unchanged``, named in the run's
    ``tinyexp.prune_unchanged`` tag and in a warning; settings that would prune nothing at all
    are refused before training by :meth:`check_prunes`.

    Attributes:
        ratio: share of channels removed in each prunable group, in [0, 1); with
            ``global_ranking`` the share of all their channels, and with ``layer_ratios`` from a
            CSV the most any group loses.
        steps: iterative pruning: reach ``ratio`` in this many steps (the final widths do not
            depend on it, except under global ranking).
        finetune_epochs: fine-tuning epochs after each step (early stopping still applies).
        round_to: keep widths a multiple of this (e.g. 4 or 8 for SIMD kernels), or null:
            counts are rounded down but never below ``round_to``; a group not wider than
            ``round_to`` stays whole.
        global_ranking: rank the channels of all groups together (torch-pruning's global
            pruning; scores normalised per group first): the least important channels go
            wherever they are, so widths come out non-uniform at the same overall ratio.
        max_layer_ratio: with ``global_ranking``, the most any one group may lose, in (0, 1]: it
            keeps ``int(width * (1 - max_layer_ratio))`` channels, at least 1. ``ratio`` and the
            ``layer_ratios`` values must not exceed it.
        layer_ratios: null (every group as above), a mapping ``{layer: ratio}`` (a group named by
            its root layer, as in ``net.named_modules()`` and the ``group`` column of
            ``layer_sensitivity.csv``; unknown names are an error listing the allowed ones;
            groups left out are pruned as without it), or the path of a
            ``layer_sensitivity.csv`` written by ``analysis=layers`` on the same architecture.
        layer_tolerance: with a CSV: each analysed group takes the largest analysed ratio up to
            which its metric (mse for anomaly data, accuracy for classification: the analysis's
            default) worsens by at most ``layer_tolerance`` x the unpruned value at every
            analysed ratio, capped by ``ratio``; 0 if even the smallest ratio costs more.
            Improvements count as no loss; ratios that removed no channel (rounding) are skipped.
    """

    prefix = "pruned"

    ratio: float = 0.5
    steps: int = 3
    finetune_epochs: int = 60
    round_to: int | None = None
    global_ranking: bool = False
    max_layer_ratio: float = 0.9
    layer_ratios: Any = None
    layer_tolerance: float = 0.02

    def __post_init__(self) -> None:
        _require(0 <= self.ratio < 1, "prune.ratio", f"must be in [0, 1), got {self.ratio}")
        _require(self.steps >= 1, "prune.steps", f"must be an int >= 1, got {self.steps}")
        _require(self.finetune_epochs >= 0, "prune.finetune_epochs",
                 f"must be an int >= 0, got {self.finetune_epochs}")
        _require(self.round_to is None or self.round_to >= 1, "prune.round_to",
                 f"must be null or an int >= 1, got {self.round_to}")
        _require(0 < self.max_layer_ratio <= 1, "prune.max_layer_ratio",
                 f"must be in (0, 1], got {self.max_layer_ratio}")
        _require(self.layer_tolerance >= 0, "prune.layer_tolerance",
                 f"must be >= 0, got {self.layer_tolerance}")
        self._check_layer_ratios()
        if self.global_ranking:
            cap = self.max_layer_ratio
            _require(self.ratio <= cap, "prune.ratio", f"must be <= prune.max_layer_ratio "
                     f"({cap}) with global_ranking (no group may lose more), got {self.ratio}")
            over = {k: v for k, v in (self._given_ratios() or {}).items() if v > cap}
            _require(not over, "prune.layer_ratios", f"must be <= prune.max_layer_ratio ({cap}) "
                     f"with global_ranking, got {over}")

    def _check_layer_ratios(self) -> None:
        # a CSV path is checked when read: describe() validates old job configs too
        value, key = self.layer_ratios, "prune.layer_ratios"
        _require(value is None or isinstance(value, str | dict), key, "must be null, a mapping "
                 f"{{layer: ratio}} or the path of a layer_sensitivity.csv, got {value!r}")
        for name, r in (self._given_ratios() or {}).items():
            ok = isinstance(r, int | float) and not isinstance(r, bool) and 0 <= r < 1
            _require(ok, key, f"{name!r} must be a ratio in [0, 1), got {r!r}")

    def _given_ratios(self) -> dict[str, float] | None:
        """The mapping set by hand, None for a CSV or null."""
        return self.layer_ratios if isinstance(self.layer_ratios, dict) else None

    def label(self) -> str:
        return f"{self.name}@{self.ratio:g}"

    def importance(self) -> Any:
        """The torch-pruning importance that ranks the channels of a group."""
        raise NotImplementedError

    def before_step(self, ctx: Context) -> Callable[[Any], None] | None:
        """Called on the network before each pruning step (e.g. to compute gradients)."""
        return None

    def group_ratios(self, ctx: Context) -> dict[str, float]:
        """``{group: ratio}`` of ``layer_ratios`` (read from the CSV if it names one)."""
        if isinstance(self.layer_ratios, str):
            path = Path(self.layer_ratios)
            _require(path.is_file(), "prune.layer_ratios", f"no such file {str(path)!r} "
                     f"(expected the layer_sensitivity.csv of an analysis=layers run)")
            return ratios_from_sensitivity(path, ctx.sensitivity_metric, self.layer_tolerance,
                                           self.ratio)
        return {str(k): float(v) for k, v in (self.layer_ratios or {}).items()}

    def apply(self, net: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        import copy

        from tinyexp.compress.prune import Allocation, UnknownLayerError, prune_structured

        trained: list[int] = []  # epochs each fine-tune ran (early stopping may end one sooner)

        def finetune(pruned: Any) -> None:
            if self.finetune_epochs > 0:
                info = ctx.fit(pruned, f"prune_step{len(trained) + 1}", self.finetune_epochs)
                trained.append(info["epochs"])

        allocation = Allocation(layer_ratios=self.group_ratios(ctx),
                                global_ranking=self.global_ranking,
                                max_layer_ratio=self.max_layer_ratio)
        try:
            pruned, report = prune_structured(
                copy.deepcopy(net), ctx.example, self.ratio, importance=self.importance(),
                steps=self.steps, before_step=self.before_step(ctx), finetune=finetune,
                round_to=self.round_to, allocation=allocation)
        except UnknownLayerError as err:
            raise self._unknown_layer(err) from None
        pruned.zero_grad(set_to_none=True)  # gradients a criterion read are of no further use
        if report.groups_unchanged:
            names = ", ".join(report.groups_unchanged)
            log.warning("prune=%s: %d of %d groups meant to shrink kept their width: %s "
                        "(recorded as pruned/groups_unchanged and the %s tag)", self.name,
                        len(report.groups_unchanged),
                        sum(r > 0 for _, r in report.groups.values()), names, UNCHANGED_TAG)
            ctx.tags[UNCHANGED_TAG] = names
        return pruned, {**ctx.measure_float(pruned, "pruned"),
                        "ratio_asked": report.ratio, "steps": report.steps,
                        "groups_pruned": report.groups_pruned,
                        "groups_unchanged": len(report.groups_unchanged),
                        "finetune_epochs": sum(trained)}

    def _unknown_layer(self, err: Any) -> ConfigError:
        source = f" (in {self.layer_ratios})" if isinstance(self.layer_ratios, str) else ""
        return ConfigError("prune.layer_ratios", f"{err.name!r}{source} is not a prunable "
                           f"layer of this network; allowed: {', '.join(err.allowed)}")

    def check_prunes(self, net: Any, example: Any) -> None:
        """Raise ``ConfigError`` if these settings would prune nothing at all on ``net``.

        A dry run of the configured pruning (``ratio``, ``steps``, ``round_to``, global ranking
        and a ``layer_ratios`` mapping, whose names are checked too) on a deep copy of ``net``,
        without fine-tuning. The counts do not depend on the channels' scores (except under
        global ranking), so every criterion is dry-run with L1 scores: no gradients needed. A
        CSV's ratios are not read here: they are at most ``ratio``, which stands in for them.
        Meant for the freshly built, untrained network and the datamodule's example input,
        before anything trains; milliseconds on the default models.

        Raises:
            ConfigError: ``prune.round_to`` if ``round_to`` alone keeps every group whole,
                ``prune.layer_ratios`` for an unknown group name or if only ``layer_ratios``
                asked for pruning, else ``prune.ratio``. Ratios of 0 (a no-op) pass.
        """
        import copy

        from tinyexp.compress.prune import (
            Allocation,
            UnknownLayerError,
            kept_channels,
            prune_structured,
        )
        from tinyexp.compress.tp_patches import L1Importance

        if isinstance(self.layer_ratios, str):  # read when pruning starts: check it exists now
            _require(Path(self.layer_ratios).is_file(), "prune.layer_ratios",
                     f"no such file {self.layer_ratios!r} (expected the layer_sensitivity.csv "
                     f"of an analysis=layers run)")
        given = {str(k): float(v) for k, v in (self._given_ratios() or {}).items()}
        if self.ratio == 0 and not any(given.values()):
            return  # nothing asked
        allocation = Allocation(layer_ratios=given, global_ranking=self.global_ranking,
                                max_layer_ratio=self.max_layer_ratio)
        try:
            _, report = prune_structured(copy.deepcopy(net), example, self.ratio,
                                         importance=L1Importance(), steps=self.steps,
                                         round_to=self.round_to, allocation=allocation)
        except UnknownLayerError as err:
            raise self._unknown_layer(err) from None
        if report.params_after < report.params_before:
            return
        meant = [(w, r) for w, r in report.groups.values() if r > 0]
        shrinkable = [w for w, r in meant if kept_channels(w, r) < w]  # without round_to
        if self.round_to and shrinkable:
            raise ConfigError("prune.round_to", f"{self.round_to} is not below the width of any "
                              f"prunable layer (widest: {max(shrinkable)} channels): nothing "
                              f"would be pruned; use a value <= {max(shrinkable) - 1}")
        key, value = (("prune.layer_ratios", given) if self.ratio == 0
                      else ("prune.ratio", self.ratio))
        widest = max((w for w, _ in meant), default=0)
        why = ("every prunable layer it applies to is 1 channel wide" if widest == 1 else
               f"the layers it applies to stayed whole (widest: {widest} channels)" if widest
               else "the network has no prunable layer (only layers fixing the output shape)")
        raise ConfigError(key, f"{value} would prune nothing: {why}; use prune=none to skip "
                               "pruning")


def ratios_from_sensitivity(path: Path, metric: str, tolerance: float,
                            cap: float) -> dict[str, float]:
    """``{group: ratio}`` from a ``layer_sensitivity.csv`` (the rule of ``layer_tolerance``).

    Per group: the largest analysed ratio up to which ``metric`` worsens by at most
    ``tolerance`` x ``|unpruned value|`` at every analysed ratio (in ratio order; NaN counts as
    too much), capped by ``cap``; 0.0 if the smallest already costs more. Rows whose ratio
    removed no channel (``kept == width``) are skipped; a group without other rows is left out.

    Raises:
        ConfigError: (``prune.layer_ratios``) if the file lacks the columns or the unpruned row.
    """
    from tinyexp.report.runs import LOWER_IS_BETTER

    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"group", "width", "kept", "ratio", metric}
    missing = sorted(need - set(rows[0] if rows else ()))
    _require(not missing, "prune.layer_ratios",
             f"{path} has no column {', '.join(missing)} (not a layer_sensitivity.csv?)")
    base = [float(r[metric]) for r in rows if r["group"] == UNPRUNED]
    _require(len(base) == 1, "prune.layer_ratios", f"{path} has no {UNPRUNED!r} row")
    allowed = tolerance * abs(base[0])
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0  # worse = sign * (value - unpruned)

    points: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["group"] != UNPRUNED and int(r["kept"]) < int(r["width"]):
            worse = sign * (float(r[metric]) - base[0])
            points.setdefault(r["group"], []).append((float(r["ratio"]), worse))
    ratios = {}
    for group, pts in points.items():
        share = 0.0
        for ratio, worse in sorted(pts):
            if math.isnan(worse) or worse > allowed:
                break
            share = ratio
        ratios[group] = min(share, cap)
    return ratios


@dataclass
class L1Prune(StructuredPrune):
    """L1 norm of each channel's weights, summed over the group (Li et al. 2017)."""

    name: str = "l1"

    def importance(self) -> Any:
        from tinyexp.compress.tp_patches import L1Importance

        return L1Importance()


@dataclass
class L2Prune(StructuredPrune):
    """Squared L2 norm of each channel's weights, summed over the group: large weights weigh
    more than under l1, small ones less."""

    name: str = "l2"

    def importance(self) -> Any:
        from tinyexp.compress.tp_patches import MagnitudeImportance

        return MagnitudeImportance(p=2)


@dataclass
class TaylorPrune(StructuredPrune):
    """First-order Taylor importance (Molchanov et al. 2019): ``|w * dL/dw|`` summed over a
    channel's weights, with the task loss's gradients over ``taylor_batches`` training batches
    (accumulated before each pruning step, network in eval mode): what removing the channel
    would cost the loss, to first order.

    Attributes:
        taylor_batches: training batches (the seeded loader's first ones) the gradients sum over.
    """

    name: str = "taylor"
    taylor_batches: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.taylor_batches >= 1, "prune.taylor_batches",
                 f"must be an int >= 1, got {self.taylor_batches}")

    def importance(self) -> Any:
        from tinyexp.compress.tp_patches import TaylorImportance

        return TaylorImportance()

    def before_step(self, ctx: Context) -> Callable[[Any], None]:
        import itertools

        from tinyexp.compress.prune import accumulate_gradients

        loss = task_loss(ctx.datamodule.task)

        def gradients(net: Any) -> None:
            batches = itertools.islice(ctx.datamodule.train_dataloader(), self.taylor_batches)
            accumulate_gradients(net, batches, loss)

        return gradients


def task_loss(task: str) -> Callable[[Any, Any], Any]:
    """``loss(net, batch)`` as the task trains (``tinyexp.lit``): the reconstruction MSE of
    a window batch for anomaly data, cross-entropy of an ``(x, y)`` batch for classification."""
    from torch.nn import functional as F

    if task == "anomaly":
        return lambda net, x: F.mse_loss(net(x), x)
    if task == "classification":
        return lambda net, batch: F.cross_entropy(net(batch[0]), batch[1])
    raise ValueError(f"no loss known for task {task!r}")


@dataclass
class FPGMPrune(StructuredPrune):
    """Filter pruning via geometric median (He et al. 2019): channels whose weights lie close
    to all the others' are redundant (the rest can stand in for them) and go first."""

    name: str = "fpgm"

    def importance(self) -> Any:
        from tinyexp.compress.tp_patches import FPGMImportance

        return FPGMImportance()


@dataclass
class RandomPrune(StructuredPrune):
    """Channels chosen at random (from the run's seeded generator): the baseline criterion every
    pruning paper compares with; a criterion that cannot beat it ranks nothing."""

    name: str = "random"

    def importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.RandomImportance()
