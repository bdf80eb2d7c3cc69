"""The bad-input suite (tests/unit/test_bad_input.py) on TransferQueue, SimpleStorage and MooncakeStore.

The tests are the unit suite's, unchanged: ``client`` is the session's TransferQueue client (once per
backend) and ``pid`` a fresh partition. The facade tests use the process-default client, so here
:func:`facade_on_deployment` makes that default a client attached to the current deployment (and
detaches it afterwards), and they too run once per backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kvplane
from tests.unit.test_bad_input import *  # noqa: F401,F403

from .conftest import Deployment


@pytest.fixture(autouse=True)
def facade_on_deployment(deployment: Deployment) -> Iterator[None]:
    kvplane.close()  # whatever default an earlier test left
    kvplane.init(deployment.worker_config)  # the controller is running: this attaches
    try:
        yield
    finally:
        kvplane.close()  # detaches; the deployment keeps serving the session's client
