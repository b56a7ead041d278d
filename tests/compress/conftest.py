"""Every compression test runs its tiny models on one thread."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_thread(single_thread):
    yield
