"""Depth pruning: ``prune=depth`` cuts the network after a block and trains an auxiliary head;
``analysis=depth`` tries every cut and reports what each costs.

Both need an architecture made of blocks (``stem``, ``blocks``, ``head``: the image zoo); the
surgery is :mod:`tinyexp.compress.depth`. Which cut keeps the accuracy depends on the network
and the data, so ``prune.cut`` has no default: ``analysis=depth`` measures every cut and names
the smallest network within a tolerance of the uncut one (``depth/best_cut``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from tinyexp.schemas import _require
from tinyexp.stages.base import Context, Stage

BLOCK_ARCHS = "resnet, mobilenet_v1, mobilenet_v2, vgg, ds_cnn"
UNCUT = "(none)"  # the uncut network's row of depth_analysis.csv
BEST_CUT_TAG = "tinyexp.depth_best_cut"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _arch(net: Any) -> str:
    """``arch=cnn (ConvAutoencoder)``: the family (its module in tinyexp.models) and class."""
    cls = type(net)
    family = cls.__module__.removeprefix("tinyexp.models.")
    return f"arch={family} ({cls.__name__})" if family != cls.__module__ else cls.__name__


def _blocks(net: Any, key: str, group: str) -> int:
    """The number of blocks of ``net``, or ``ConfigError(key)`` if it has none to cut."""
    from tinyexp.compress.depth import block_count

    count = block_count(net)
    _require(count is not None, key, f"{group}=depth needs an architecture made of blocks "
             f"({BLOCK_ARCHS}); {_arch(net)} has none")
    _require(count >= 2, key, f"{group}=depth needs at least 2 blocks to cut between; "
             f"{_arch(net)} has {count}")
    return count


def _check_cut(cut: int, count: int, net: Any, key: str) -> None:
    _require(1 <= cut <= count - 1, key, f"{cut} must be in 1..{count - 1}: {_arch(net)} has "
             f"{count} blocks, and cutting after the last one removes none")


def _fit(ctx: Context, net: Any, stage: str, epochs: int, **kwargs: Any) -> int:
    """``ctx.fit`` for ``epochs`` (none if 0); the epochs it ran."""
    if epochs <= 0:
        return 0
    with warnings.catch_warnings():
        # the frozen blocks are in eval mode on purpose (their BatchNorm statistics stay put)
        warnings.filterwarnings("ignore", r".*module\(s\) in eval mode at the start of training")
        return int(ctx.fit(net, stage, epochs, **kwargs)["epochs"])


def _check_head(group: str, head_width: Any, head_convs: Any) -> None:
    _require(head_width is None or (_is_int(head_width) and head_width >= 1),
             f"{group}.head_width", f"must be null (the channels at the cut) or an int >= 1, "
             f"got {head_width!r}")
    _require(_is_int(head_convs) and head_convs >= 0, f"{group}.head_convs",
             f"must be an int >= 0 (0: pooling and a linear classifier only), got {head_convs!r}")


@dataclass
class DepthPrune(Stage):
    """Keep the stem and the first ``cut`` blocks, attach an auxiliary head (``head_convs``
    depthwise-separable convolutions of ``head_width`` channels, global average pooling, a
    linear classifier), train the head with the kept blocks frozen (``freeze``) for
    ``head_epochs``, then fine-tune everything for ``finetune_epochs``. The network handed on
    is thawed: later stages (QAT, ...) train all of it.

    Attributes:
        cut: the block to cut after, 1-based (``cut=k`` keeps blocks 1..k), in 1..N-1 for a
            network of N blocks; null is refused before training (run ``analysis=depth``).
        head_width: pointwise width of the head's convolutions; null: the channels at the cut.
        head_convs: separable convolutions in the head, >= 0.
        freeze: freeze the kept blocks (no gradients, BatchNorm statistics kept) while the head
            trains.
        head_epochs: epochs training the head (early stopping still applies).
        finetune_epochs: then epochs fine-tuning the whole cut network; 0 skips it.
        lr: learning rate of both trainings; null: the run's (``finetune.lr``, else
            ``optim.lr``).
    """

    prefix = "pruned"

    name: str = "depth"
    cut: int | None = None
    head_width: int | None = None
    head_convs: int = 1
    freeze: bool = True
    head_epochs: int = 30
    finetune_epochs: int = 10
    lr: float | None = None

    def __post_init__(self) -> None:
        _require(self.cut is None or (_is_int(self.cut) and self.cut >= 1), "prune.cut",
                 f"must be an int >= 1 (the block to cut after) or null, got {self.cut!r}")
        _check_head("prune", self.head_width, self.head_convs)
        _require(isinstance(self.freeze, bool), "prune.freeze",
                 f"must be true or false, got {self.freeze!r}")
        for key in ("head_epochs", "finetune_epochs"):
            value = getattr(self, key)
            _require(_is_int(value) and value >= 0, f"prune.{key}",
                     f"must be an int >= 0, got {value!r}")
        _require(self.head_epochs + self.finetune_epochs >= 1, "prune.head_epochs",
                 "must be >= 1 when prune.finetune_epochs is 0: an untrained head guesses")
        _require(self.lr is None or self.lr > 0, "prune.lr",
                 f"must be null (the run's) or a number > 0, got {self.lr!r}")

    def label(self) -> str:
        return f"{self.name}@{self.cut}" if self.cut is not None else self.name

    def check_prunes(self, net: Any, example: Any) -> None:
        """Raise ``ConfigError("prune.cut")`` if ``net`` cannot be cut as configured: it has no
        blocks, ``cut`` is null, or ``cut`` is outside 1..N-1. Called before anything trains
        (``example`` is unused: the cut is checked against the block count alone)."""
        count = _blocks(net, "prune.cut", "prune")
        _require(self.cut is not None, "prune.cut", "is null: which cut keeps the accuracy "
                 "depends on the network and the data; run analysis=depth prune=none to measure "
                 f"every cut, then set prune.cut to its depth/best_cut, in 1..{count - 1} for "
                 f"{_arch(net)}")
        _check_cut(self.cut, count, net, "prune.cut")

    def apply(self, net: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        from tinyexp.compress.depth import cut_network

        self.check_prunes(net, ctx.example)
        count = len(net.blocks)
        cut = cut_network(net, self.cut, ctx.example, head_width=self.head_width,
                          head_convs=self.head_convs, freeze=self.freeze)
        head = _fit(ctx, cut, "depth_head", self.head_epochs, lr=self.lr)
        cut.freeze(False)  # from here on the whole network trains
        tuned = _fit(ctx, cut, "depth_finetune", self.finetune_epochs, lr=self.lr)
        return cut, {**ctx.measure_float(cut, "pruned"), "cut": self.cut,
                     "blocks_kept": self.cut, "blocks_total": count, "head_epochs": head,
                     "finetune_epochs": tuned, "epochs": head + tuned}


@dataclass
class DepthAnalysis(Stage):
    """For each cut: a copy of the network cut there with a fresh auxiliary head trained for
    ``head_epochs`` (kept blocks frozen with ``freeze``), evaluated on the test data like the
    per-layer analysis. Writes ``depth_analysis.csv`` and ``depth_analysis.png`` (the metric
    against the parameters, each point labelled by its cut) and logs ``depth/cut<k>_<metric>``,
    ``..._<metric>_delta``, ``..._params``, ``..._params_ratio`` and ``depth/best_cut``. The
    network passes through unchanged.

    ``best_cut``: of the cuts whose metric is at most ``tolerance`` (absolute) worse than the
    uncut network's, the one with the fewest parameters (ties: the earlier cut); left out, and
    the ``tinyexp.depth_best_cut`` tag set to ``none``, if no cut is that close.

    Attributes:
        cuts: the cuts to try (each in 1..N-1), or null: every one.
        head_width: pointwise width of the head's convolutions; null: the channels at the cut.
        head_convs: separable convolutions in the head, >= 0.
        freeze: freeze the kept blocks while the head trains.
        head_epochs: epochs training each head, >= 1.
        tolerance: how much worse than the uncut network ``best_cut`` may be (absolute: 0.01 =
            one accuracy point).
        metric: the metric compared, plotted and logged; null: the dataset's default
            (accuracy for classification).
    """

    prefix = "depth"
    yields_model = False

    name: str = "depth"
    cuts: list[int] | None = None
    head_width: int | None = None
    head_convs: int = 1
    freeze: bool = True
    head_epochs: int = 10
    tolerance: float = 0.01
    metric: str | None = None

    def __post_init__(self) -> None:
        cuts = None if self.cuts is None else list(self.cuts)
        _require(cuts is None or (len(cuts) >= 1 and all(_is_int(k) and k >= 1 for k in cuts)
                                  and len(set(cuts)) == len(cuts)), "analysis.cuts",
                 f"must be null (every cut) or a non-empty list of distinct ints >= 1, got {cuts}")
        _check_head("analysis", self.head_width, self.head_convs)
        _require(isinstance(self.freeze, bool), "analysis.freeze",
                 f"must be true or false, got {self.freeze!r}")
        _require(_is_int(self.head_epochs) and self.head_epochs >= 1, "analysis.head_epochs",
                 f"must be an int >= 1 (an untrained head guesses), got {self.head_epochs!r}")
        _require(self.tolerance >= 0, "analysis.tolerance",
                 f"must be >= 0, got {self.tolerance}")

    def check_prunes(self, net: Any, example: Any) -> None:
        """Raise ``ConfigError`` if ``net`` has no blocks or a cut is outside 1..N-1."""
        self._cuts(net)

    def _cuts(self, net: Any) -> list[int]:
        count = _blocks(net, "analysis.cuts", "analysis")
        cuts = list(range(1, count)) if self.cuts is None else sorted(self.cuts)
        for cut in cuts:
            _check_cut(cut, count, net, "analysis.cuts")
        return cuts

    def apply(self, net: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        from tinyexp.compress.depth import cut_network, features
        from tinyexp.measure.cost import count_params
        from tinyexp.report.depth import write_depth_report
        from tinyexp.report.runs import LOWER_IS_BETTER

        cuts, count = self._cuts(net), len(net.blocks)
        metric = self.metric or ctx.sensitivity_metric
        total, base = count_params(net), ctx.evaluate(net)

        def row(cut: Any, kept: int, channels: int, params: int, values: dict[str, float],
                epochs: int | None) -> dict[str, Any]:
            return {"cut": cut, "blocks_kept": kept, "blocks_total": count,
                    "channels": channels, "params": params, "params_ratio": params / total,
                    **values, f"{metric}_delta": values[metric] - base[metric],
                    "head_epochs": epochs}

        rows = [row(UNCUT, count, features(net, count, ctx.example).shape[1], total, base, None)]
        for k in cuts:
            cut = cut_network(net, k, ctx.example, head_width=self.head_width,
                              head_convs=self.head_convs, freeze=self.freeze)
            epochs = _fit(ctx, cut, f"depth_cut{k}", self.head_epochs, searched=False)
            cut.freeze(False)
            rows.append(row(k, k, features(cut, k, ctx.example).shape[1], count_params(cut),
                            ctx.evaluate(cut), epochs))
        best = best_cut(rows, metric, self.tolerance, metric in LOWER_IS_BETTER)
        for path in write_depth_report(rows, metric, self.tolerance, best, ctx.out_dir):
            ctx.artifacts.append((path, "depth_analysis"))
        ctx.tags[BEST_CUT_TAG] = "none" if best is None else str(best)
        metrics: dict[str, Any] = {} if best is None else {"best_cut": best}
        for r in rows[1:]:
            key = f"cut{r['cut']}"
            metrics.update({f"{key}_{metric}": r[metric],
                            f"{key}_{metric}_delta": r[f"{metric}_delta"],
                            f"{key}_params": r["params"], f"{key}_params_ratio": r["params_ratio"]})
        return net, metrics


def best_cut(rows: list[dict[str, Any]], metric: str, tolerance: float,
             lower_is_better: bool) -> int | None:
    """The cut of the smallest network (fewest ``params``; ties: the earlier cut) whose
    ``metric`` is at most ``tolerance`` worse than the uncut row's (absolute; NaN is too
    much), or None if no cut is that close. ``rows``: as in ``depth_analysis.csv``."""
    base = next(r[metric] for r in rows if r["cut"] == UNCUT)
    sign = 1.0 if lower_is_better else -1.0  # worse = sign * (value - uncut)
    # 1e-9: a drop of exactly the tolerance (0.93 - 0.92) is within it despite float rounding
    close = [r for r in rows if r["cut"] != UNCUT
             and not math.isnan(r[metric]) and sign * (r[metric] - base) <= tolerance + 1e-9]
    if not close:
        return None
    return int(min(close, key=lambda r: (r["params"], r["cut"]))["cut"])

