"""``distill=kd``: knowledge distillation from the float baseline into every later training.

The stage runs before pruning and changes no network: it keeps a frozen copy of the network it
receives (the trained float baseline) as the teacher in the context, and every training after
it (pruning fine-tunes, QAT) then learns from the teacher's outputs as well as from the data
(see :func:`tinyexp.lit.train`: ``(1 - weight) * task loss + weight * distillation loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tinyexp.schemas import _require
from tinyexp.stages.base import Context, Stage


@dataclass
class KnowledgeDistillation(Stage):
    """Hinton-style distillation from the baseline (classifiers: softened logits; autoencoders:
    the teacher's reconstruction).

    Attributes:
        temperature: softmax temperature of the classifier logits, > 0 (autoencoders: unused).
        weight: share of the distillation loss in the training loss, in [0, 1] (0: task loss
            only, 1: the teacher's outputs only).
    """

    prefix = "distill"
    yields_model = False

    name: str = "kd"
    temperature: float = 4.0
    weight: float = 0.5

    def __post_init__(self) -> None:
        _require(self.temperature > 0, "distill.temperature",
                 f"must be > 0, got {self.temperature}")
        _require(0 <= self.weight <= 1, "distill.weight",
                 f"must be in [0, 1], got {self.weight}")

    def label(self) -> str:
        return f"{self.name}-t{self.temperature:g}-w{self.weight:g}"

    def settings(self) -> dict[str, float]:
        """The ``distill`` argument of :func:`tinyexp.lit.train`."""
        return {"temperature": self.temperature, "weight": self.weight}

    def apply(self, net: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        import copy

        teacher = copy.deepcopy(net).eval()
        teacher.requires_grad_(False)
        ctx.teacher = teacher  # read by ctx.fit: every later training distils from it
        ctx.distill = self
        return net, self.settings()
