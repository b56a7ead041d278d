"""How many channels each pruning group keeps, and a torch-pruning pruner that keeps exactly that.

torch-pruning 1.6.1 (``tp``) turns a ratio into a count per group as ``int(width * (1 -
ratio))`` kept channels (then rounded down to a multiple of ``round_to``). When that count is
0 — a 16-wide conv at 0.95, 8 dims per head at 0.9, any group under a ``round_to`` larger than
what it keeps — tp selects every channel of the group, its ``check_pruning_group`` refuses to
empty a layer, and the group keeps its full width without a word. A larger ratio could so keep
more than a smaller one: on the default CNN (one step) 0.93 left 273 parameters, 0.95 2,170 and
0.97 all 12,648; with three steps the last step fell through and left the second step's widths.

Here :func:`kept_channels` is the one rule for every group's count, and :class:`WidthPruner`
is tp's pruner with its per-step selection (``_prune``) replaced by one that removes exactly
the channels that rule leaves: never all of them, never silently none. It keeps tp's dependency
graph, group tracing, importance hooks, head bookkeeping and channel choice (the lowest scores
go); what it does not support (head removal, isomorphic pruning) it refuses up front.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp

__all__ = ["WidthPruner", "kept_channels"]


def kept_channels(width: int, ratio: float, round_to: int | None = None) -> int:
    """Channels a group of ``width`` keeps when ``ratio`` of it is pruned.

    ``floor(width * (1 - ratio))``: at least the asked share goes, as tp counts, so any ratio
    > 0 removes a channel from a group that can lose one. With ``round_to`` the count is rounded
    down to a multiple of it. Never below the minimum: 1 channel, or ``round_to`` channels with
    ``round_to`` (a width stays a multiple of it); a group already at (or under) the minimum
    keeps its width. Non-increasing in ``ratio``; ``ratio <= 0`` keeps ``width``.

    Examples: ``kept_channels(32, 0.99) == 1``, ``kept_channels(16, 0.5, 4) == 8``,
    ``kept_channels(32, 0.9, 8) == 8``, ``kept_channels(32, 0.5, 1000) == 32``.
    """
    if ratio <= 0:
        return width
    # the epsilon absorbs float error: 10 * (1 - 0.9) is 0.9999999999999998
    return _at_least(math.floor(width * (1 - ratio) + 1e-9), width, round_to, 1)


def _at_least(keep: int, width: int, round_to: int | None, minimum: int) -> int:
    """``keep`` rounded down to a multiple of ``round_to``, not under ``minimum`` (itself rounded
    up to a multiple) nor over ``width``."""
    step = round_to or 1
    floor = max(step, -(-minimum // step) * step)
    return min(width, max(floor, keep - keep % step))


class WidthPruner(tp.pruner.BasePruner):
    """tp's ``BasePruner`` whose every group keeps exactly :func:`kept_channels` channels.

    Local pruning (each group its own ratio, ``pruning_ratio`` or ``pruning_ratio_dict``): step
    ``i`` of ``n`` leaves ``kept_channels(initial width, ratio * i / n, round_to)`` channels of a
    group, so the widths after the last step do not depend on ``n``. Global ranking: tp's
    threshold over all groups' scores sets the counts (``floor(total * (1 - ratio))`` channels
    stay overall); each group keeps ``int(width * (1 - max_pruning_ratio))`` channels, at least
    1, and ``round_to`` rounds its count down, never under ``round_to``. Attention head dims are
    counted per head (every head keeps the same dims). ``plan`` lists the groups it may shrink.
    """

    _KEEP = 2.0**20  # above any normalised score; + rank keeps the order (exact in float32)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("prune_num_heads") or kwargs.get("isomorphic"):
            raise NotImplementedError("WidthPruner prunes head dims only, without isomorphism")
        super().__init__(*args, **kwargs)
        self._ranked_total: int | None = None  # global ranking: the channels ranked at step 1
        self.plan = self._plan()

    # ------------------------------------------------------------------------- the groups

    def _groups(self) -> Iterator[tuple[Any, int]]:
        """``(group, channel groups)`` of every group tp would consider (attention re-rooted)."""
        for group in self.DG.get_all_groups(ignored_layers=self.ignored_layers,
                                            root_module_types=self.root_module_types):
            if self._is_atten_group(group)[0]:
                group = self._downstream_node_as_root_if_attention(group)
                if group is None:
                    continue
            yield group, self._get_channel_groups(group)

    def _initial(self, group: Any, ch_groups: int) -> int:
        """The group's width before pruning, per channel group (dims per head for attention)."""
        root = group[0].dep
        initial = (self.layer_init_out_ch if self.DG.is_out_channel_pruning_fn(root.handler)
                   else self.layer_init_in_ch)[root.target.module]
        return initial // ch_groups

    def _user_ratio(self, group: Any, step: int) -> float | None:
        """The ``pruning_ratio_dict`` ratio of the group at ``step`` (tp's lookup), else None."""
        for dep, _ in group:
            for module, fn in ((dep.source.module, dep.trigger), (dep.target.module, dep.handler)):
                if module in self._layer_to_scope and self.DG.is_out_channel_pruning_fn(fn):
                    return self.get_target_pruning_ratio(module, step=step)
        return None

    def _plan(self) -> dict[str, tuple[int, float]]:
        """``{group: (width, ratio)}``: every group this pruner may shrink, named by its first
        width layer in module order (as ``sensitivity.prunable_groups`` names it), its width
        as counted (dims per head for attention) and the ratio meant for it at the last step."""
        names = {m: name for name, m in self.model.named_modules()}
        order = {m: i for i, m in enumerate(names)}
        roots = tuple(self.root_module_types)
        plan = []
        for group, ch_groups in self._groups():
            first = min((dep.target.module for dep, _ in group
                         if isinstance(dep.target.module, roots)
                         and self.DG.is_out_channel_pruning_fn(dep.handler)),
                        key=order.__getitem__)
            ratio = self._user_ratio(group, self.iterative_steps)
            plan.append((order[first], names[first], self._initial(group, ch_groups),
                         self.pruning_ratio if ratio is None else ratio))
        return {name: (width, ratio) for _, name, width, ratio in sorted(plan)}

    # ------------------------------------------------------------------------- one step

    def estimate_importance(self, group: Any) -> torch.Tensor | None:
        """tp's scores; with global ranking, each group's ``int(width * (1 - max_pruning_ratio))``
        best channels (at least 1) score above any other before the threshold is taken.

        tp applies ``max_pruning_ratio`` only between steps: within one step global ranking may
        select every channel of a group (at 0.5 the transformer's head dims, scored as a mean
        over heads, go that way). The order within a group is kept.
        """
        imp = super().estimate_importance(group)
        if imp is None or not self.global_pruning:
            return imp
        ch_groups = self._get_channel_groups(group)  # heads: every head keeps the same dims
        keep = self._capped(group, ch_groups)
        dims = imp.view(ch_groups, -1).clone()
        best = dims.mean(dim=0).argsort(descending=True, stable=True)[:keep]
        rank = torch.arange(len(best), 0, -1, dtype=dims.dtype, device=dims.device)
        dims[:, best] = self._KEEP + rank
        return dims.view(-1)

    def _capped(self, group: Any, ch_groups: int) -> int:
        return max(1, int(self._initial(group, ch_groups) * (1 - self.max_pruning_ratio)))

    @torch.no_grad()
    def _prune(self) -> Iterator[Any]:
        if self.current_step > self.iterative_steps:
            warnings.warn("Pruning exceed the maximum iterative steps, no pruning will be "
                          "performed.", stacklevel=2)
            return
        counted, ranked = [], []  # (group, ch_groups, scores per dim[, channels kept])
        for group, ch_groups in self._groups():
            if not self._check_pruning_ratio(group):
                continue  # a layer of it is down to 1 channel (or at the cap): it cannot shrink
            imp = self.estimate_importance(group)
            if imp is None:
                continue  # unscored: stays whole (prune_structured reports it as unchanged)
            dims = imp.view(ch_groups, -1).mean(dim=0).cpu()  # one score per dim of every head
            ratio = self._user_ratio(group, self.current_step)
            if ratio is None and self.global_pruning:
                ranked.append((group, ch_groups, dims))
                continue
            if ratio is None:
                ratio = self.per_step_pruning_ratio[self.current_step]
            keep = kept_channels(self._initial(group, ch_groups), ratio, self.round_to)
            counted.append((group, ch_groups, dims, keep))

        for group, ch_groups, dims, keep in counted + self._ranked_counts(ranked):
            n = len(dims) - keep
            if n <= 0:
                continue
            lowest = torch.argsort(dims, stable=True)[:n]
            idxs = torch.cat([lowest + g * len(dims) for g in range(ch_groups)])
            root = group[0].dep
            pruning = self.DG.get_pruning_group(root.target.module, root.handler,
                                                sorted(idxs.tolist()))
            if self.DG.check_pruning_group(pruning):
                yield pruning

    def _ranked_counts(self, ranked: list[tuple[Any, int, torch.Tensor]]) -> list[tuple]:
        """Channels kept by each globally ranked group: tp's threshold, capped and rounded."""
        if not ranked:
            return []
        scores = torch.cat([dims for _, _, dims in ranked])
        if self._ranked_total is None:
            self._ranked_total = len(scores)
        ratio = self.per_step_pruning_ratio[self.current_step]
        n = len(scores) - kept_channels(self._ranked_total, ratio)
        threshold = torch.kthvalue(scores, n).values if n > 0 else -math.inf
        counts = []
        for group, ch_groups, dims in ranked:
            keep = len(dims) - int((dims <= threshold).sum())
            keep = _at_least(keep, len(dims), self.round_to, self._capped(group, ch_groups))
            counts.append((group, ch_groups, dims, keep))
        return counts
