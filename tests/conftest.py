"""Shared fixtures: compose the real config the way the app does; run tiny models on one thread."""

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


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP's
    spinning threads make the step-by-step LSTM kernels orders of magnitude slower."""
    import torch  # here, not at the top: most test modules never load torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
