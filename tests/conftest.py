"""Shared fixtures: compose the real config the way the app does; run tiny models on one thread."""

from __future__ import annotations

import pytest
from support import compose


@pytest.fixture
def compose_cfg():
    """``compose_cfg(["arch=lstm", ...])`` -> the composed job config."""
    return compose


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP's
    spinning threads make the step-by-step LSTM kernels orders of magnitude slower."""
    import torch  # here, not at the top: most test modules never load torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
