"""The public-API fuzz suite (tests/unit/test_fuzz_public_api.py) on TransferQueue (SimpleStorage in CI).

The same calls and argument pools, fewer examples (each call is a round trip to the controller). The
facade's default is made a client attached to the running deployment, as in test_bad_input_tq.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import kvplane
from tests.unit.test_fuzz_public_api import CALLS, call_with_drawn_arguments, seed

from .conftest import Deployment


@pytest.fixture
def tq_default(deployment: Deployment, client) -> Iterator[None]:
    kvplane.close()
    kvplane.init(deployment.worker_config)
    try:
        yield
    finally:
        kvplane.close()


@pytest.mark.parametrize("name", sorted(CALLS))
@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(data=st.data())
def test_no_raw_exception_escapes_the_public_api_on_simple_storage(tq_default, client, pid, name, data):
    seed(client, pid)
    try:
        call_with_drawn_arguments(client, pid, name, data)
    finally:
        client.clear_samples(None, pid)
