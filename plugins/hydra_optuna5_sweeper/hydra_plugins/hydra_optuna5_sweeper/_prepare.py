"""Before any trial runs: the settings checked, the search space built, every job's config
composed and validated, the search space's corners probed (``_PrepareMixin``, a base class of
``OptunaSweeper``).
"""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import logging
from typing import Any, List, Optional, Sequence

from omegaconf import OmegaConf

from hydra_plugins.hydra_optuna5_sweeper._checks import (
    _SettingsError,
    check_study_name,
    probe_message,
    user_key,
)
from hydra_plugins.hydra_optuna5_sweeper._space import (
    SearchSpace,
    SpaceError,
    build_search_space,
    collect_params,
    grid_choices,
)

log = logging.getLogger("hydra_plugins.hydra_optuna5_sweeper.optuna_sweeper")


class _PrepareMixin:
    """Checking methods of ``OptunaSweeper`` (uses its settings, config and ``_fail``)."""

    def _group_options(self, group: str) -> List[str]:
        try:
            return list(self.hydra_context.config_loader.get_group_options(group))
        except Exception:  # a group from a plugin's ConfigStore, say: do not guess
            return []

    def _check_job(self, overrides: Sequence[str]) -> Optional[Exception]:
        """Compose one job's config and validate it; the error, or None."""
        try:
            job_cfg = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides))
            if self.checked.validate_fn is not None:
                self.checked.validate_fn(job_cfg)
        except Exception as err:
            return err
        return None

    def _probe(self, space: SearchSpace, handover: List[str]) -> None:
        """Validate the corners of the search space before anything runs: every choice of a
        categorical and both ends of a range, the other parameters at their first value. A
        search space that names a missing option or an out-of-range value stops here."""
        def first(dist: Any) -> Any:
            return dist.choices[0] if hasattr(dist, "choices") else dist.low

        def corners(dist: Any) -> List[Any]:
            return list(dist.choices) if hasattr(dist, "choices") else [dist.low, dist.high]

        base = {name: first(dist) for name, dist in space.distributions.items()}
        points = [(None, base)] + [(name, {**base, name: value})
                                   for name, dist in space.distributions.items()
                                   for value in corners(dist) if value != base[name]]
        for varied, point in points:
            err = self._check_job(space.overrides(point) + handover)
            if err is not None:
                where = " ".join(space.overrides(point)) or "(defaults)"
                self._fail(f"{probe_message(err, point, varied)} [in search space point: "
                           f"{where}]", err)

    def _prepare(self, arguments: List[str]) -> SearchSpace:
        """Check the settings and build the search space, or fail with exit status 2."""
        s = self.settings
        try:
            self.checked = s.check()
            self.study_name = check_study_name(s.study_name) or self.sweep_dir.name
            choices = OmegaConf.select(self.config, "hydra.runtime.choices", default=None)
            params, origins = collect_params(s.params, s.group_params, choices or {},
                                             self._group_options)
            space = build_search_space(params, arguments, self.hydra_context.config_loader,
                                       origins)
            target = str((s.sampler or {}).get("_target_", ""))
            self.is_grid = target == "optuna.samplers.GridSampler"
            self.n_trials = s.n_trials
            if self.is_grid:
                size = 1
                for name, dist in space.distributions.items():
                    try:
                        size *= len(grid_choices(dist))
                    except ValueError as err:
                        raise SpaceError(name, str(err)) from None
                # As hydra-optuna-sweeper: no more trials than grid points.
                self.n_trials = min(self.n_trials, size)
                log.info(f"Updating num of trials to {self.n_trials} due to using GridSampler.")
        except _SettingsError as err:
            self._fail(f"{user_key(self.raw_settings, err.setting)}: {err.message}")
        except SpaceError as err:
            self._fail(str(err))
        return space
