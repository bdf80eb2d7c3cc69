"""End-to-end fixtures: one local Ray and one TransferQueue deployment per backend, shared by the session.

Ray plus a TransferQueue bootstrap costs 15-30 s on a 2-core box, so every e2e test shares them:
``ray_cluster`` starts one local Ray with explicit CPUs; ``deployment`` (session-scoped, parametrized
over ``simple``, ``mooncake_cpu`` and, for ``test_columnar_tq.py`` only, ``columnar``) bootstraps TransferQueue on it. TransferQueue is a per-process
global and MooncakeStore's bootstrap kills every ``mooncake_master`` on the host, so only one
deployment may exist at a time: pytest groups the tests by the ``deployment`` parameter and tears one
deployment down before it sets up the next. Tests never close the shared ``client``; each uses a fresh
partition id (``pid``).

Every test under ``tests/e2e`` gets the ``e2e`` marker, and every test that runs on MooncakeStore the
``mooncake`` marker. A missing Ray, TransferQueue or MooncakeStore fails the tests (nothing is skipped).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray

from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
from kvplane.testing import transfer_queue_config

E2E_DIR = Path(__file__).resolve().parent
BACKENDS = ("simple", "mooncake_cpu", "columnar")
#: The one module that runs on the columnar backend (the whole tier would not fit CI's budget a third
#: time); it runs on nothing else.
COLUMNAR_MODULE = "test_columnar_tq.py"
#: Logical CPUs of the session's Ray: the controller and one storage unit, plus room for a second
#: deployment's worth of actors in tests that need it.
RAY_NUM_CPUS = 4


def tq_config(backend: str, **overrides: Any) -> dict[str, Any]:
    """The test deployment (:func:`kvplane.testing.transfer_queue_config`: one storage unit, faster on
    2 cores, test-sized deadlines and Mooncake segments) with ``overrides``."""
    return transfer_queue_config(backend, **overrides)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # One deployment exists at a time (TransferQueue is a per-process global): every backend is a
    # parameter of the session's ``deployment`` fixture, so pytest runs them one after another.
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("deployment") if callspec is not None else None
        columnar_module = Path(str(item.fspath)).name == COLUMNAR_MODULE
        wrong = backend is not None and (backend == "columnar") != columnar_module
        (dropped if wrong else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    for item in items:
        if E2E_DIR not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.e2e)
        callspec = getattr(item, "callspec", None)
        on_mooncake = callspec is not None and callspec.params.get("deployment") == "mooncake_cpu"
        if on_mooncake or "mooncake" in item.name:
            item.add_marker(pytest.mark.mooncake)


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """Start the session's local Ray (explicit CPUs); its GCS address, for worker processes."""
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in the test process; the e2e session owns Ray")
    ray.init(address="local", num_cpus=RAY_NUM_CPUS, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@dataclass
class Deployment:
    """A running TransferQueue deployment and the driver client that bootstrapped it.

    Attributes:
        backend: ``simple``, ``mooncake_cpu`` or ``columnar``.
        client: The bootstrapping client (shared: tests must not close it).
        worker_config: The config an attaching process uses (``bootstrap=False``), Ray address included.
    """

    backend: str
    client: TransferQueueDataPlaneClient
    worker_config: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session", params=BACKENDS)
def deployment(request: pytest.FixtureRequest, ray_address: str) -> Iterator[Deployment]:
    """Bootstrap TransferQueue on the session's Ray; tear it down (and check it is gone) afterwards."""
    backend = request.param
    client = TransferQueueDataPlaneClient(tq_config(backend), bootstrap=True)
    master = client.mooncake_master
    try:
        yield Deployment(backend, client, tq_config(backend, ray_address=ray_address))
    finally:
        client.close()
        try:
            assert master is None or master.poll() is not None, "mooncake_master outlived its deployment"
        finally:
            if master is not None and master.poll() is None:  # never leak it into the next deployment
                master.kill()
                master.wait(10)


@pytest.fixture
def client(deployment: Deployment) -> TransferQueueDataPlaneClient:
    """The shared bootstrapping client of the current deployment (never close it in a test)."""
    return deployment.client


@pytest.fixture
def pid(request: pytest.FixtureRequest) -> str:
    """A fresh partition id per test, free of regex metacharacters (tests match errors against it).

    Overrides the root fixture, whose id embeds the parametrized node name (``[simple]``).
    """
    return f"t-{request.node.originalname[:40]}-{uuid.uuid4().hex[:8]}"
