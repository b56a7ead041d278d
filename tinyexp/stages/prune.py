"""Structured pruning criteria: ``prune=l1`` (and every criterion added beside it).

Each criterion is a spec class naming a torch-pruning importance; the procedure is shared
(:class:`StructuredPrune`): prune ``ratio`` of every prunable group through torch-pruning's
dependency graph in ``steps`` steps, fine-tune after each, measure the result. A new criterion
is one subclass here plus one YAML file in ``conf/prune/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tinyexp.schemas import _require
from tinyexp.stages.base import Context, Stage


@dataclass
class StructuredPrune(Stage):
    """Remove whole channels, hidden units and head dimensions, ranked by ``importance()``.

    Attributes:
        ratio: share of channels removed in each prunable group, in [0, 1).
        steps: iterative pruning: reach ``ratio`` in this many steps.
        finetune_epochs: fine-tuning epochs after each step (early stopping still applies).
        round_to: keep widths a multiple of this (e.g. 4 or 8 for SIMD kernels), or null.
    """

    prefix = "pruned"

    ratio: float = 0.5
    steps: int = 1
    finetune_epochs: int = 10
    round_to: int | None = None

    def __post_init__(self) -> None:
        _require(0 <= self.ratio < 1, "prune.ratio", f"must be in [0, 1), got {self.ratio}")
        _require(self.steps >= 1, "prune.steps", f"must be an int >= 1, got {self.steps}")
        _require(self.finetune_epochs >= 0, "prune.finetune_epochs",
                 f"must be an int >= 0, got {self.finetune_epochs}")
        _require(self.round_to is None or self.round_to >= 1, "prune.round_to",
                 f"must be null or an int >= 1, got {self.round_to}")

    def label(self) -> str:
        return f"{self.name}@{self.ratio:g}"

    def importance(self) -> Any:
        """The torch-pruning importance that ranks the channels of a group."""
        raise NotImplementedError

    def apply(self, net: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        import copy

        from tinyexp.compress.prune import prune_structured

        trained: list[int] = []  # epochs each fine-tune ran (early stopping may end one sooner)

        def finetune(pruned: Any) -> None:
            if self.finetune_epochs > 0:
                info = ctx.fit(pruned, f"prune_step{len(trained) + 1}", self.finetune_epochs)
                trained.append(info["epochs"])

        pruned, report = prune_structured(
            copy.deepcopy(net), ctx.example, self.ratio, importance=self.importance(),
            steps=self.steps, finetune=finetune, round_to=self.round_to)
        return pruned, {**ctx.measure_float(pruned, "pruned"),
                        "ratio_asked": report.ratio, "steps": report.steps,
                        "groups_pruned": report.groups_pruned,
                        "finetune_epochs": sum(trained)}


@dataclass
class L1Prune(StructuredPrune):
    """L1 norm of each channel's weights, summed over the group (Li et al. 2017)."""

    name: str = "l1"

    def importance(self) -> Any:
        from tinyexp.compress.tp_patches import L1Importance

        return L1Importance()


@dataclass
class RandomPrune(StructuredPrune):
    """Channels chosen at random (from the run's seeded generator): the baseline criterion every
    pruning paper compares with; a criterion that cannot beat it ranks nothing."""

    name: str = "random"

    def importance(self) -> Any:
        import torch_pruning as tp

        return tp.importance.RandomImportance()
