"""Shared fixtures: compose the real config the way the app does."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from support import CONF


@pytest.fixture
def compose_cfg():
    """``compose_cfg(["arch=lstm", ...])`` -> the composed job config."""

    def _compose(overrides: list[str] | None = None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=list(overrides or []))

    yield _compose
    GlobalHydra.instance().clear()
