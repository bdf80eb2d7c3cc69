"""Shared test fixtures."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def pid(request) -> str:
    """A fresh partition id per test (backends may be shared across a session)."""
    return f"t-{request.node.originalname[:40]}-{uuid.uuid4().hex[:8]}"
