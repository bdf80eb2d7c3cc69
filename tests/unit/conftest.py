"""Unit-tier fixtures: the embedded memory backend, no Ray."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvplane.adapters.memory import MemoryDataPlaneClient


@pytest.fixture
def client() -> Iterator[MemoryDataPlaneClient]:
    """A fresh memory client per test."""
    c = MemoryDataPlaneClient()
    yield c
    c.close()
