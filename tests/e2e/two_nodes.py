"""The two-node scenario of ``test_two_nodes.py``, run as its own Ray driver process.

The pytest process already holds a Ray driver connection (the session's local Ray), and a process
can hold only one, so the test runs ``python -m tests.e2e.two_nodes OUT.json DEADLINE_S [columnar]`` in
a new session (``columnar``: :func:`run_columnar`, the columnar backend's nodes and owners). This
script starts a Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``:
node A with the custom resource ``node_a``, node B with ``node_b``, two CPUs each), bootstraps
TransferQueue SimpleStorage on it with two storage units (TransferQueue places them round-robin over
the alive nodes: one per node), registers a finite partition, then runs

- a producer as a Ray task pinned to node A, writing ``N`` samples in chunks, and
- two consumers as Ray tasks pinned to node B, ``StreamingDataset`` ranks 0 and 1 of ``dp_world`` 2
  attaching through ``config=`` (``bootstrap=False``), each checking every row it receives
  against what the producer wrote for that key (bit-exact, :func:`tests.e2e.workers.check_rows`),

while a process outside the cluster tries to attach with a token that is not the cluster's, and
writes what happened where to ``OUT.json`` for the test to check. Every wait is bounded by the
deadline; TransferQueue, Ray and the cluster are stopped on the way out, and the test kills whatever
is left in the session by PID. Ray's token authentication is whatever the environment says
(the test sets ``RAY_AUTH_MODE=token`` and a fresh ``RAY_AUTH_TOKEN``; every node started here
inherits both).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
import uuid
from typing import Any

import ray

from .workers import check_rows, key_of, sample_batch

logger = logging.getLogger(__name__)

TASK = "train"
FIELDS = ["x", "emb", "ids", "text"]
#: Samples written: 7 steps of 8 and a short last step of 5, split over two ranks.
NUM_SAMPLES = 61
BATCH_SIZE = 8
CHUNK = 10
NODE_CPUS = 2


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0)
def produce(cfg: dict[str, Any], pid: str, n: int, chunk: int, first: int = 0) -> dict[str, Any]:
    """Attach (``bootstrap=False``), write samples ``first .. first + n - 1`` in chunks; report the node."""
    from kvplane import build_data_plane_client

    client = build_data_plane_client(cfg, bootstrap=False)
    try:
        for start in range(first, first + n, chunk):
            idx = list(range(start, min(first + n, start + chunk)))
            tags = [{"seq_len": i % 5 + 1} for i in idx]
            client.put_samples([key_of(i) for i in idx], pid, sample_batch(idx), tags=tags)
            time.sleep(0.05)  # consumers claim while the producer is still writing
    finally:
        client.close()
    return {"node": _node_id(), "written": n}


@ray.remote(num_cpus=0)
def consume(cfg: dict[str, Any], pid: str, rank: int, world: int) -> dict[str, Any]:
    """Iterate one DP rank's loader (attaching through ``config=``); check every row; report the keys."""
    from loaders import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(
        config=cfg,
        partition_id=pid,
        task_name=TASK,
        fields=FIELDS,
        batch_size=BATCH_SIZE,
        dp_rank=rank,
        dp_world=world,
        timeout_s=120.0,
    )
    steps: list[dict[str, Any]] = []
    for td, meta in StreamingDataLoader(dataset):
        check_rows(meta.sample_ids, td)  # raises (failing the task) on any differing bit
        steps.append({"step": meta.extra_info["step"], "ids": list(meta.sample_ids)})
    return {"node": _node_id(), "rank": rank, "steps": steps}


def _storage_unit_nodes() -> dict[str, str]:
    """Node of each alive SimpleStorage unit actor (Ray's GCS actor table)."""
    table = ray._private.state.actors(actor_state_name="ALIVE")
    return {
        info["Name"]: info["Address"]["NodeID"]
        for info in table.values()
        if info.get("Name", "").startswith("TransferQueueStorageUnit#")
    }


def _attach_with_wrong_token(cfg: dict[str, Any]) -> subprocess.Popen[str]:
    """Start a process that attaches from outside the cluster with a token that is not the cluster's."""
    env = dict(os.environ, RAY_AUTH_TOKEN=secrets.token_hex(32))
    return subprocess.Popen(
        [sys.executable, "-m", __spec__.name, "attach", json.dumps(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def attach(cfg_json: str) -> dict[str, Any]:
    """Attach (``bootstrap=False``) and detach; report the error type and message instead of raising."""
    from kvplane import build_data_plane_client

    try:
        build_data_plane_client(json.loads(cfg_json), bootstrap=False).close()
    except Exception as exc:  # reported to the driver, which checks the type and the cause
        causes, seen = [], exc.__cause__
        while seen is not None:
            causes.append(f"{type(seen).__name__}: {seen}")
            seen = seen.__cause__ or seen.__context__
        return {"error": type(exc).__name__, "message": str(exc), "causes": causes}
    return {"error": None}


def _get(refs: list[Any], deadline: float, what: str) -> list[Any]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"no time left for {what}")
    return ray.get(refs, timeout=remaining)


def _held(owner: str, namespace: str) -> int:
    return ray.get(ray.get_actor(owner, namespace=namespace).ping.remote(), timeout=30)


def _columnar_owners() -> dict[str, dict[str, Any]]:
    """Node and number of held column objects of each columnar owner actor."""
    from kvplane.adapters.transfer_queue._columnar import NAMESPACE, owner_names

    table = ray._private.state.actors(actor_state_name="ALIVE")
    nodes = {info["Name"]: info["Address"]["NodeID"] for info in table.values() if info.get("Name")}
    return {
        name: {"node": nodes[name], "objects": _held(name, NAMESPACE)}
        for name in owner_names()
    }


def run_columnar(deadline_s: float) -> dict[str, Any]:
    """The columnar backend on two nodes, and a third node that joins after the bootstrap.

    Owners start on nodes A and B; then node C joins. Producers on A and on C write half the samples
    each (C's columns go to an existing owner, C having none); two DP ranks on B read them all.
    """
    from ray.cluster_utils import Cluster

    from kvplane import build_data_plane_client
    from kvplane.testing import transfer_queue_config

    deadline = time.monotonic() + deadline_s
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": NODE_CPUS, "resources": {"node_a": 1}, "include_dashboard": False},
    )
    client = None
    try:
        cluster.add_node(num_cpus=NODE_CPUS, resources={"node_b": 1})
        ray.init(address=cluster.address)
        cluster.wait_for_nodes(timeout=max(1.0, deadline - time.monotonic()))
        cfg = transfer_queue_config("columnar", ray_address=cluster.address)
        client = build_data_plane_client(cfg)  # bootstraps: one owner per alive node (A and B)
        owners_at_start = _columnar_owners()
        cluster.add_node(num_cpus=NODE_CPUS, resources={"node_c": 1})  # joins after the bootstrap
        cluster.wait_for_nodes(timeout=max(1.0, deadline - time.monotonic()))
        nodes = {
            name: n["NodeID"]
            for n in ray.nodes()
            if n["Alive"]
            for name in ("node_a", "node_b", "node_c")
            if n["Resources"].get(name)
        }
        pid = f"two-nodes-columnar-{uuid.uuid4().hex[:8]}"
        client.register_partition(pid, FIELDS, num_samples=NUM_SAMPLES, consumer_tasks=[TASK])
        half = NUM_SAMPLES // 2
        on_b = consume.options(resources={"node_b": 0.01})
        ranks = [on_b.remote(cfg, pid, r, 2) for r in range(2)]
        producers = [
            produce.options(resources={"node_a": 0.01}).remote(cfg, pid, half, CHUNK),
            produce.options(resources={"node_c": 0.01}).remote(cfg, pid, NUM_SAMPLES - half, CHUNK, half),
        ]
        written = _get(producers, deadline, "the producers")
        results = _get(ranks, deadline, "the consumers")
        return {
            "nodes": nodes,
            "owners_at_start": owners_at_start,
            "owners_at_end": _columnar_owners(),
            "producers": written,
            "ranks": results,
            "consumed": client.check_consumption_status(pid, [TASK]),
        }
    finally:
        if client is not None:
            client.close()
        ray.shutdown()
        cluster.shutdown()


def run(deadline_s: float) -> dict[str, Any]:
    """Start the two-node cluster, run the scenario, stop everything; return what was observed."""
    from ray.cluster_utils import Cluster

    from kvplane import build_data_plane_client
    from kvplane.testing import transfer_queue_config

    deadline = time.monotonic() + deadline_s
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": NODE_CPUS, "resources": {"node_a": 1}, "include_dashboard": False},
    )
    client = intruder = None
    try:
        cluster.add_node(num_cpus=NODE_CPUS, resources={"node_b": 1})
        ray.init(address=cluster.address)
        cluster.wait_for_nodes(timeout=max(1.0, deadline - time.monotonic()))
        nodes = {
            name: n["NodeID"]
            for n in ray.nodes()
            if n["Alive"]
            for name in ("node_a", "node_b")
            if n["Resources"].get(name)
        }
        # The config every attaching process gets: the cluster's address (used by a process that is
        # not already connected to Ray; Ray tasks and actors are) and two storage units.
        cfg = transfer_queue_config("simple", ray_address=cluster.address, num_storage_units=2)
        client = build_data_plane_client(cfg)  # bootstraps: this driver is connected to the cluster
        units = _storage_unit_nodes()
        pid = f"two-nodes-{uuid.uuid4().hex[:8]}"
        client.register_partition(pid, FIELDS, num_samples=NUM_SAMPLES, consumer_tasks=[TASK])
        intruder = _attach_with_wrong_token(cfg)  # Ray refuses it after its connect retries (~20 s)

        on_b = consume.options(resources={"node_b": 0.01})
        ranks = [on_b.remote(cfg, pid, r, 2) for r in range(2)]
        producer = produce.options(resources={"node_a": 0.01}).remote(cfg, pid, NUM_SAMPLES, CHUNK)
        written = _get([producer], deadline, "the producer")[0]
        results = _get(ranks, deadline, "the consumers")
        consumed = client.check_consumption_status(pid, [TASK])
        out, _ = intruder.communicate(timeout=max(1.0, deadline - time.monotonic()))
        return {
            "driver_node": _node_id(),
            "nodes": nodes,
            "storage_units": units,
            "producer": written,
            "ranks": results,
            "consumed": consumed,
            "wrong_token": json.loads(out.splitlines()[-1]),
            "num_samples": NUM_SAMPLES,
        }
    finally:
        if intruder is not None and intruder.poll() is None:
            intruder.kill()
            intruder.wait()
        if client is not None:
            client.close()  # tears TransferQueue down (this process bootstrapped it)
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv[0] == "attach":
        print(json.dumps(attach(argv[1])), flush=True)
        return 0
    out_path, deadline_s = argv[0], float(argv[1])
    backend = argv[2] if len(argv) > 2 else "simple"
    result = run_columnar(deadline_s) if backend == "columnar" else run(deadline_s)
    with open(out_path, "w") as f:
        json.dump(result, f)
    logger.info("two-node scenario done: %s", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
