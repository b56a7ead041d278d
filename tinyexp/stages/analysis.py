"""``analysis=layers``: per-layer pruning sensitivity, after the baseline.

Prune ONE prunable group at a time (a layer and whatever must shrink with it) at each ratio,
leave the rest of the network untouched, and record the task metric's change: where a model
can be cut. The network passes through unchanged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from tinyexp.schemas import _require
from tinyexp.stages.base import Context, Stage


@dataclass
class LayerAnalysis(Stage):
    """Attributes:
        ratios: share of a group's channels removed, each in (0, 1).
        finetune_epochs: fine-tune each pruned copy first (0: the classic analysis).
        metric: the metric plotted and logged; null: the dataset's default (mse for anomaly
            data, where F1 under a fixed threshold collapses for any damaged autoencoder).
    """

    prefix = "layers"
    yields_model = False

    name: str = "layers"
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9])
    finetune_epochs: int = 0
    metric: str | None = None

    def __post_init__(self) -> None:
        _require(len(self.ratios) >= 1 and all(0 < r < 1 for r in self.ratios),
                 "analysis.ratios", f"must be a non-empty list of numbers in (0, 1), "
                 f"got {list(self.ratios)}")
        _require(self.finetune_epochs >= 0, "analysis.finetune_epochs",
                 f"must be an int >= 0, got {self.finetune_epochs}")

    def apply(self, net: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        from tinyexp.compress.sensitivity import layer_sensitivity
        from tinyexp.report.layers import write_layer_report

        copies = itertools.count(1)

        def finetune(pruned: Any) -> None:  # curves: layers_copy1, ... in the rows' order
            ctx.fit(pruned, f"layers_copy{next(copies)}", self.finetune_epochs,
                    searched=False)

        rows = layer_sensitivity(net, ctx.example, evaluate=ctx.evaluate,
                                 ratios=list(self.ratios), opset=ctx.opset,
                                 finetune=finetune if self.finetune_epochs > 0 else None)
        metric = self.metric or ctx.sensitivity_metric
        for path in write_layer_report(rows, metric, ctx.out_dir):
            ctx.artifacts.append((path, "layer_sensitivity"))
        return net, layer_metrics(rows, metric)


def layer_metrics(rows: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """``<group>/r50/f1`` and ``.../f1_delta`` (prefixed ``layers/`` by the pipeline)."""
    out = {}
    for row in rows:
        if row["group"] != "(none)" and row["kept"] < row["width"]:  # else nothing was cut
            key = f"{row['group']}/r{round(100 * row['ratio']):02d}"
            out[f"{key}/{metric}"] = row[metric]
            out[f"{key}/{metric}_delta"] = row[f"{metric}_delta"]
    return out
