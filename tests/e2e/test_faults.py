"""Faults on a real TransferQueue deployment: dead actors, a stalled controller, a torn-down deployment.

Every fault is real: ``ray.kill`` of TransferQueue's named actors, ``SIGSTOP`` of the controller's
process. They happen in a *lab*: one spawned process per backend that starts its own Ray
(``LAB_CPUS`` CPUs) and bootstraps SimpleStorage with two storage units (so a dead unit takes half of
the samples with it) or the columnar backend (whose per-node owner actor can die instead), never the
session's deployment. The controller and teardown scenarios run unchanged on both backends. A test
that breaks the deployment rebuilds it (``close()`` + a new bootstrap) and checks that a replay
buffer reconstructs its queue from ``list_metadata`` once the producers have written again; the next
test reuses the rebuilt one.

Each scenario runs in the lab and returns plain data (error type, message, seconds); the tests assert
on it here. ``NO_HANG_S`` bounds how long a failing call may take on a loaded 2-core box: a no-hang
bound, not a speed target.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psutil
import pytest
import ray
import torch
import transfer_queue as tq

from kvplane import build_data_plane_client
from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
from kvplane.adapters.transfer_queue._columnar import NAMESPACE as OWNER_NAMESPACE
from kvplane.adapters.transfer_queue._columnar import OWNER_PREFIX, owner_names
from kvplane.replay import select_groups, write_group

from .conftest import tq_config

REQUEST_TIMEOUT_S = 5.0
NO_HANG_S = REQUEST_TIMEOUT_S + 30.0
UNITS = 2
LAB_CPUS = 2 * (1 + UNITS)  # a rebuild must not wait for the CPUs of the deployment it replaces
LAB_CALL_TIMEOUT_S = 300.0  # one scenario, bootstraps included
CONTROLLER = ("TransferQueueController", "transfer_queue")
GROUPS = 4  # rollout groups of GROUP_SIZE keys each, one weight version per group
GROUP_SIZE = 2

# ---------------------------------------------------------------------- inside the lab process

_lab: dict[str, Any] = {}


def _config(backend: str | None = None) -> dict[str, Any]:
    backend = backend or _lab["backend"]
    units = {"num_storage_units": UNITS} if backend == "simple" else {}
    return tq_config(backend, request_timeout_s=REQUEST_TIMEOUT_S, **units)


def lab_start(backend: str) -> str:
    """Start the lab's own Ray for ``backend``; its GCS address (for processes that attach)."""
    _lab["backend"] = backend
    ray.init(address="local", num_cpus=LAB_CPUS, include_dashboard=False)
    return ray.get_runtime_context().gcs_address


def lab_stop() -> None:
    client = _lab.pop("client", None)
    if client is not None:
        client.close()
    ray.shutdown()


def _client():
    """The lab's bootstrapping client: the running deployment, or a new one."""
    if "client" not in _lab:
        _lab["client"] = TransferQueueDataPlaneClient(_config(), bootstrap=True)
    return _lab["client"]


def _outcome(call: Callable[[], Any]) -> dict[str, Any]:
    """What a call did: its value or its error (type, message, cause type), and how long it took."""
    started = time.monotonic()
    try:
        value = call()
    except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        return {
            "error": type(exc).__name__,
            "message": str(exc),
            "cause": type(exc.__cause__).__name__ if exc.__cause__ is not None else None,
            "seconds": time.monotonic() - started,
        }
    return {"error": None, "value": value, "seconds": time.monotonic() - started}


def _group_keys(group: int) -> list[str]:
    return [f"g{group}-{i}" for i in range(GROUP_SIZE)]


def _produce(client, pid: str) -> None:
    """The producers: one committed group per weight version 0..GROUPS-1, rows holding the version."""
    for version in range(GROUPS):
        write_group(
            client,
            pid,
            _group_keys(version),
            {"x": torch.full((GROUP_SIZE, 3), float(version))},
            group_id=f"g{version}",
            weight_version=version,
        )


def _queue(client, pid: str) -> dict[str, Any]:
    """What a replay buffer rebuilds from tags alone: depth, the fresh groups and their bytes."""
    fresh, stale = select_groups(client, pid, current_version=GROUPS - 1, max_staleness=1)
    return {
        "depth": client.depth(pid),
        "fresh": [g.group_id for g in fresh],
        "stale": [g.group_id for g in stale],
        "bytes": sum(g.size_bytes for g in fresh),
    }


def _alive(name: str, namespace: str | None = None) -> bool:
    return any(
        a["name"] == name and namespace in (None, a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
    )


def _process_of(actor: Any) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


def _until_dead(processes: list[int], within_s: float = 30.0) -> None:
    """Wait until the actors' processes have exited (Ray drops a killed actor's name a moment before)."""
    deadline = time.monotonic() + within_s
    while True:
        alive = []
        for pid in processes:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {alive} still run {within_s}s after their actors were killed")
        time.sleep(0.1)


def _until_stopped(process: int, within_s: float = 10.0) -> None:
    """Wait until a SIGSTOPped process is stopped (delivery is asynchronous)."""
    deadline = time.monotonic() + within_s
    while psutil.Process(process).status() != psutil.STATUS_STOPPED:
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {process} not stopped {within_s}s after SIGSTOP")
        time.sleep(0.01)


def _kill(name: str, namespace: str | None = None) -> None:
    """``ray.kill`` a named actor of the deployment and wait until it is really gone."""
    actor = ray.get_actor(name, namespace=namespace)
    process = _process_of(actor)
    ray.kill(actor)
    _until_dead([process])
    if _alive(name, namespace):
        raise AssertionError(f"Ray still lists {name} after its process exited")


def _rebuild(pid: str) -> dict[str, Any]:
    """Close the broken deployment, bootstrap a new one, let the producers write again."""
    old = _lab.pop("client")
    report = {"close": _outcome(old.close)}
    report["old_client_after_close"] = _outcome(old.ping)
    client = _client()
    report["empty_after_rebuild"] = _queue(client, pid)
    _produce(client, pid)
    report["queue_after_rewrite"] = _queue(client, pid)
    report["ping_after_rebuild"] = _outcome(client.ping)
    return report


def _probe(client, pid: str, keys: list[str]) -> dict[str, Any]:
    """What each call does after a kill: ping, listing, claim queue, each key's read, a new put."""
    return {
        "ping": _outcome(client.ping),
        "listed": _outcome(lambda: client.list_sample_ids(pid)),
        "queue_after_kill": _outcome(lambda: _queue(client, pid)),
        "reads": {k: _outcome(lambda k=k: client.get_samples([k], pid, ["x"])["x"].tolist()) for k in keys},
        "put": _outcome(lambda: client.put_samples(["n0", "n1"], pid, {"x": torch.zeros(2, 3)})),
    }


def storage_unit_killed(pid: str, victim: int) -> dict[str, Any]:
    """Kill one SimpleStorage unit under a partition of committed groups; probe; rebuild."""
    client = _client()
    _produce(client, pid)
    keys = [k for g in range(GROUPS) for k in _group_keys(g)]
    indexes = tq.get_client().kv_retrieve_meta(keys, pid, create=False).global_indexes
    unit_of = {key: int(gi) % UNITS for key, gi in zip(keys, indexes, strict=True)}
    report: dict[str, Any] = {"unit_of": unit_of, "queue_before": _queue(client, pid)}

    _kill(f"TransferQueueStorageUnit#{victim}")  # this process bootstrapped: the units are in its namespace
    report.update(_probe(client, pid, keys))
    report["listed_after_put"] = client.list_sample_ids(pid)
    lost = [k for k in keys if unit_of[k] == victim]
    report["evict_lost"] = _outcome(lambda: client.evict(lost[:1], pid))
    report.update(_rebuild(pid))
    return report


def owner_killed(pid: str) -> dict[str, Any]:
    """Kill the columnar owner actor (one node: it holds every column object); probe; rebuild."""
    client = _client()
    _produce(client, pid)
    keys = [k for g in range(GROUPS) for k in _group_keys(g)]
    report: dict[str, Any] = {"keys": keys, "owners": owner_names(), "queue_before": _queue(client, pid)}
    _kill(report["owners"][0], OWNER_NAMESPACE)
    report.update(_probe(client, pid, keys))
    report.update(_rebuild(pid))
    return report


def _committed_groups_and_a_claimable_partition(pid: str) -> tuple[Any, dict[str, Any]]:
    """The lab client with ``pid`` holding committed groups, ``pid-claims`` registered; the queue."""
    client = _client()
    _produce(client, pid)
    client.register_partition(pid + "-claims", ["x"], num_samples=2, consumer_tasks=["train"])
    return client, {"queue_before": _queue(client, pid)}


def controller_killed(pid: str) -> dict[str, Any]:
    """Kill the controller actor under a partition of committed groups; probe every kind of call; rebuild."""
    client, report = _committed_groups_and_a_claimable_partition(pid)
    _kill(*CONTROLLER)
    calls: dict[str, Callable[[], Any]] = {
        "ping": client.ping,
        "list_metadata": lambda: client.list_metadata(pid),
        "get_samples": lambda: client.get_samples(["g0-0"], pid, ["x"]),
        "put_samples": lambda: client.put_samples(["n0"], pid, {"x": torch.zeros(1, 3)}),
        "claim_meta": lambda: client.claim_meta(pid + "-claims", "train", ["x"], 1, timeout_s=1.0),
        "clear_samples": lambda: client.clear_samples(["g0-0"], pid),
    }
    report["calls"] = {name: _outcome(call) for name, call in calls.items()}
    report.update(_rebuild(pid))
    return report


def controller_stalled(pid: str) -> dict[str, Any]:
    """Freeze the controller's process (SIGSTOP): calls miss their deadline; it resumes whole (SIGCONT)."""
    client, report = _committed_groups_and_a_claimable_partition(pid)
    controller = ray.get_actor(*CONTROLLER)
    process = _process_of(controller)
    os.kill(process, signal.SIGSTOP)
    try:
        _until_stopped(process)
        report["ping_short"] = _outcome(lambda: client.ping(timeout_s=1.0))
        report["get_samples"] = _outcome(lambda: client.get_samples(["g0-0"], pid, ["x"]))
        report["claim_meta"] = _outcome(
            lambda: client.claim_meta(pid + "-claims", "train", ["x"], 1, timeout_s=1.0)
        )
        report["controller_listed_while_stopped"] = _alive(*CONTROLLER)
    finally:
        os.kill(process, signal.SIGCONT)
    report["ping_after"] = _outcome(lambda: client.ping(timeout_s=30))
    report["rows_after"] = _outcome(
        lambda: client.get_samples([k for g in range(GROUPS) for k in _group_keys(g)], pid, ["x"])["x"][
            :, 0
        ].tolist()
    )
    report["queue_after"] = _outcome(lambda: _queue(client, pid))
    return report


def attached_worker(backend: str, address: str, pid: str, ready: Any, closed: Any, results: Any) -> None:
    """An attached client in another process: write, wait for the driver's close, then probe."""
    client = build_data_plane_client({**_config(backend), "ray_address": address}, bootstrap=False)
    try:
        client.put_samples(["w0"], pid, {"x": torch.ones(1, 3)})
        ready.set()
        if not closed.wait(LAB_CALL_TIMEOUT_S):
            raise TimeoutError("the driver never closed")
        results.put(
            {
                "ping": _outcome(client.ping),
                "get_samples": _outcome(lambda: client.get_samples(["w0"], pid, ["x"])),
                "put_samples": _outcome(lambda: client.put_samples(["w1"], pid, {"x": torch.ones(1, 3)})),
            }
        )
    finally:
        client.close()


def driver_closes(address: str, pid: str) -> dict[str, Any]:
    """close() of the bootstrapping client while a worker process is attached: teardown, fast errors."""
    client = _client()
    _produce(client, pid)
    spawn = multiprocessing.get_context("spawn")
    ready, closed, results = spawn.Event(), spawn.Event(), spawn.Queue()
    args = (_lab["backend"], address, pid, ready, closed, results)
    worker = spawn.Process(target=attached_worker, args=args)
    worker.start()
    report: dict[str, Any] = {}
    try:
        if not ready.wait(LAB_CALL_TIMEOUT_S):
            raise TimeoutError("the attached worker did not start")
        storage = (
            [ray.get_actor(f"TransferQueueStorageUnit#{u}") for u in range(UNITS)]
            if _lab["backend"] == "simple"
            else [ray.get_actor(name, namespace=OWNER_NAMESPACE) for name in owner_names()]
        )
        actors = [ray.get_actor(*CONTROLLER), *storage]
        processes = [_process_of(actor) for actor in actors]
        report["close"] = _outcome(_lab.pop("client").close)
        _until_dead(processes)
        closed.set()
        report["after_close"] = {
            "ping": _outcome(client.ping),
            "get_samples": _outcome(lambda: client.get_samples(["g0-0"], pid, ["x"])),
            "put_samples": _outcome(lambda: client.put_samples(["n0"], pid, {"x": torch.zeros(1, 3)})),
        }
        report["close_again"] = _outcome(client.close)
        report["tq_actors_left"] = sorted(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "TransferQueue" in a["name"] or a["name"].startswith(OWNER_PREFIX)
        )
        report["worker"] = results.get(timeout=LAB_CALL_TIMEOUT_S)
    finally:
        worker.join(LAB_CALL_TIMEOUT_S)
        if worker.is_alive():  # never leave it behind
            worker.kill()
            worker.join(10)
    report["worker_exitcode"] = worker.exitcode
    return report


# ---------------------------------------------------------------------- the tests (pytest process)


class Lab:
    """The lab process: runs one scenario at a time, each within ``LAB_CALL_TIMEOUT_S``."""

    def __init__(self, pool: ProcessPoolExecutor, address: str, backend: str) -> None:
        self.pool = pool
        self.address = address
        self.backend = backend

    def run(self, scenario: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        return self.pool.submit(scenario, *args).result(timeout=LAB_CALL_TIMEOUT_S)


@pytest.fixture(scope="module", params=["simple", "columnar"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The lab of one backend (a test names its backend with ``parametrize("lab", ..., indirect=True)``)."""
    backend = request.param
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield Lab(pool, pool.submit(lab_start, backend).result(timeout=LAB_CALL_TIMEOUT_S), backend)
        pool.submit(lab_stop).result(timeout=LAB_CALL_TIMEOUT_S)
    finally:
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # the lab process this fixture started, if it did not stop in time
            process.join(30)
            if process.is_alive():
                process.kill()


def _assert_fails(outcome: dict[str, Any], error: str, *, within_s: float = NO_HANG_S) -> None:
    assert outcome["error"] == error, outcome
    assert outcome["seconds"] < within_s, outcome


def _assert_rebuilt(report: dict[str, Any]) -> None:
    """The broken deployment closed cleanly, the new one starts empty, and the producers refill it."""
    assert report["close"]["error"] is None and report["close"]["seconds"] < NO_HANG_S, report["close"]
    _assert_fails(report["old_client_after_close"], "DataPlaneUnavailable", within_s=REQUEST_TIMEOUT_S)
    assert report["empty_after_rebuild"] == {"depth": 0, "fresh": [], "stale": [], "bytes": 0}
    assert report["queue_after_rewrite"] == report["queue_before"]
    assert report["ping_after_rebuild"]["error"] is None


@pytest.mark.parametrize("lab", ["simple"], indirect=True)
def test_a_dead_storage_unit_loses_its_share_and_surfaces_as_unavailable(lab: Lab, pid: str):
    victim = 1
    report = lab.run(storage_unit_killed, pid, victim)
    before = report["queue_before"]
    assert before == {"depth": GROUPS, "fresh": ["g2", "g3"], "stale": ["g0", "g1"], "bytes": before["bytes"]}
    assert before["bytes"] == GROUPS // 2 * GROUP_SIZE * 3 * 4

    # ping reports the dead unit; the controller still lists every key and group (tags are metadata).
    _assert_fails(report["ping"], "DataPlaneUnavailable")
    assert f"TransferQueueStorageUnit#{victim}" in report["ping"]["message"]
    assert report["listed"]["value"] == sorted(report["unit_of"])
    assert report["queue_after_kill"]["value"] == before

    # Reads of the lost share fail, typed and bounded; the other unit's rows read back intact.
    lost = sorted(k for k, unit in report["unit_of"].items() if unit == victim)
    assert lost and len(lost) < len(report["unit_of"])
    for key, outcome in report["reads"].items():
        if key in lost:
            _assert_fails(outcome, "DataPlaneUnavailable")
        else:
            version = int(key[1 : key.index("-")])
            assert outcome["error"] is None and outcome["value"] == [[float(version)] * 3], (key, outcome)
    # A write routed to the dead unit and an evict of a lost key fail the same way: recovery is a rebuild.
    _assert_fails(report["put"], "DataPlaneUnavailable")
    # The failed put's new keys stay listed: removing them would need the dead unit too.
    assert report["listed_after_put"] == sorted([*report["unit_of"], "n0", "n1"])
    _assert_fails(report["evict_lost"], "DataPlaneUnavailable")
    _assert_rebuilt(report)


@pytest.mark.parametrize("lab", ["columnar"], indirect=True)
def test_a_dead_columnar_owner_loses_its_objects_and_surfaces_as_unavailable(lab: Lab, pid: str):
    report = lab.run(owner_killed, pid)
    before = report["queue_before"]
    assert before["depth"] == GROUPS and len(report["owners"]) == 1

    # ping names the dead owner; the controller still lists every key and group (tags are metadata).
    _assert_fails(report["ping"], "DataPlaneUnavailable")
    assert report["owners"][0] in report["ping"]["message"]
    assert report["listed"]["value"] == sorted(report["keys"])
    assert report["queue_after_kill"]["value"] == before

    # Every row lived in the dead owner's objects: each read fails, typed and bounded; so does a put
    # (its columns go to that owner). Recovery is a rebuild, as for a dead storage unit.
    for outcome in report["reads"].values():
        _assert_fails(outcome, "DataPlaneUnavailable")
    _assert_fails(report["put"], "DataPlaneUnavailable")
    _assert_rebuilt(report)


def test_a_dead_controller_fails_every_call_as_unavailable_and_a_rebuild_recovers(lab: Lab, pid: str):
    report = lab.run(controller_killed, pid)
    assert report["queue_before"]["depth"] == GROUPS
    for name, outcome in report["calls"].items():
        _assert_fails(outcome, "DataPlaneUnavailable")
        assert "controller" in outcome["message"], (name, outcome)
    _assert_rebuilt(report)


def test_a_stalled_controller_makes_calls_time_out_and_loses_nothing(lab: Lab, pid: str):
    report = lab.run(controller_stalled, pid)
    assert report["controller_listed_while_stopped"] is True  # alive to Ray: a deadline, not "gone"
    _assert_fails(report["ping_short"], "DataPlaneTimeout", within_s=1.0 + 30)
    for name in ("get_samples", "claim_meta"):
        _assert_fails(report[name], "DataPlaneTimeout")
        assert report[name]["seconds"] >= REQUEST_TIMEOUT_S - 0.5, (name, report[name])
    assert report["ping_after"]["error"] is None
    assert report["rows_after"]["value"] == [float(g) for g in range(GROUPS) for _ in range(GROUP_SIZE)]
    assert report["queue_after"]["value"] == report["queue_before"]


def test_close_of_the_bootstrapping_client_tears_down_and_later_calls_fail_fast(lab: Lab, pid: str):
    report = lab.run(driver_closes, lab.address, pid)
    assert report["close"]["error"] is None and report["close"]["seconds"] < NO_HANG_S
    assert report["tq_actors_left"] == []  # the controller and both units are gone
    for outcome in report["after_close"].values():  # refused at once: no request deadline waited for
        _assert_fails(outcome, "DataPlaneUnavailable", within_s=REQUEST_TIMEOUT_S)
    assert report["close_again"]["error"] is None  # idempotent
    # The attached worker's next calls fail as well, typed and bounded, and it still detaches cleanly.
    for outcome in report["worker"].values():
        _assert_fails(outcome, "DataPlaneUnavailable")
    assert report["worker_exitcode"] == 0
