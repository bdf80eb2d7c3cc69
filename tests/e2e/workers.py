"""Code the e2e tests run in other processes (spawned, so each starts with no Ray and no TransferQueue).

Workers attach to the session's deployment with ``bootstrap=False``; the ``standalone_*`` scenarios
start their own Ray and deployment (and must leave nothing running). Every function returns plain
data or raises, so a ``ProcessPoolExecutor`` carries the outcome back to the test.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tensordict import TensorDict

from kvplane._tensors import make_object_column


def sample_batch(indexes: list[int]) -> TensorDict:
    """Rows derived from their index, so any reader can check a row belongs to its key."""
    n = len(indexes)
    return TensorDict(
        {
            "x": torch.tensor(indexes, dtype=torch.int64),
            "emb": torch.stack([torch.full((3,), float(i)) for i in indexes]).to(torch.bfloat16),
            "ids": torch.nested.nested_tensor(
                [torch.full((i % 5 + 1,), i, dtype=torch.int64) for i in indexes], layout=torch.jagged
            ),
            "text": make_object_column([f"sample-{i}" for i in indexes]),
        },
        batch_size=[n],
    )


def key_of(i: int) -> str:
    return f"s{i:04d}"


def index_of(key: str) -> int:
    return int(key[1:])


def check_rows(keys: list[str], td: TensorDict) -> None:
    """Raise unless every row of ``td`` is the one :func:`sample_batch` wrote for its key."""
    expected = sample_batch([index_of(k) for k in keys])
    assert torch.equal(td["x"], expected["x"]), (keys, td["x"])
    assert torch.equal(td["emb"], expected["emb"]), keys
    got_ids, want_ids = td["ids"], expected["ids"]
    rows = got_ids.unbind() if got_ids.is_nested else list(got_ids)
    assert [r.tolist() for r in rows] == [r.tolist() for r in want_ids.unbind()], keys
    assert td.get("text").tolist() == expected.get("text").tolist(), keys


def _attach(cfg: dict[str, Any]):
    from kvplane import build_data_plane_client

    return build_data_plane_client(cfg, bootstrap=False)


def produce(cfg: dict[str, Any], pid: str, n: int, chunk: int, pause_s: float) -> dict[str, Any]:
    """Write ``n`` samples in chunks, then try a dtype-drifting write; detach."""
    from kvplane import DataPlaneBadRequest

    client = _attach(cfg)
    try:
        for start in range(0, n, chunk):
            idx = list(range(start, min(n, start + chunk)))
            tags = [{"seq_len": i % 5 + 1, "group_id": f"g{i // 4}"} for i in idx]
            client.put_samples([key_of(i) for i in idx], pid, sample_batch(idx), tags=tags)
            time.sleep(pause_s)
        try:
            client.put_samples(["drift"], pid, {"x": torch.tensor([1.5])})
            drift = "accepted"
        except DataPlaneBadRequest as exc:
            drift = str(exc)
        return {"written": n, "drift": drift}
    finally:
        client.close()


def consume(cfg: dict[str, Any], pid: str, task: str, batch_size: int) -> list[str]:
    """Claim until the task has claimed the partition's ``num_samples``; check every row read."""
    client = _attach(cfg)
    fields = ["x", "emb", "ids", "text"]
    got: list[str] = []
    try:
        while True:
            meta = client.claim_meta(pid, task, fields, batch_size, timeout_s=120)
            if meta.size == 0:
                return got
            check_rows(meta.sample_ids, client.get_data(meta))
            assert meta.sequence_lengths == [index_of(k) % 5 + 1 for k in meta.sample_ids]
            got.extend(meta.sample_ids)
    finally:
        client.close()


def attach_and_close(cfg: dict[str, Any], pid: str) -> dict[str, Any]:
    """Attach, write and read back, close twice; report what the process saw."""
    import ray

    client = _attach(cfg)
    client.put_samples(["w0", "w1"], pid, sample_batch([0, 1]), tags=[{"by": "worker"}, {"by": "worker"}])
    check_rows(["w0", "w1"], client.get_samples(["w0", "w1"], pid, None))
    listed = client.list_keys(pid)
    client.close()
    client.close()
    return {"listed": listed, "ray_still_connected": ray.is_initialized()}


# ---------------------------------------------------------------------- standalone deployments


def _controller_alive(ray_module: Any) -> bool:
    try:
        ray_module.get_actor("TransferQueueController", namespace="transfer_queue")
    except ValueError:
        return False
    return True


def standalone_cpu_check(units: int, ray_num_cpus: int) -> dict[str, Any]:
    """Bootstrap with more storage units than a kvplane-started Ray has CPUs for."""
    import ray

    from kvplane import DataPlaneUnavailable, build_data_plane_client

    cfg = {
        "impl": "transfer_queue",
        "backend": "simple",
        "storage_capacity": None,
        "num_storage_units": units,
        "claim_meta_poll_interval_s": 0.02,
        "ray_num_cpus": ray_num_cpus,
    }
    started = time.monotonic()
    try:
        build_data_plane_client(cfg)
    except DataPlaneUnavailable as exc:
        return {
            "error": str(exc),
            "seconds": time.monotonic() - started,
            "ray_left_running": ray.is_initialized(),
        }
    raise AssertionError("the bootstrap did not fail")


def standalone_facade(yaml_path: str) -> dict[str, Any]:
    """``kvplane.init(yaml)`` with no Ray running: kvplane starts Ray and TransferQueue, and stops both."""
    import ray

    import kvplane

    client = kvplane.init(yaml_path)
    try:
        put = kvplane.kv_batch_put(
            ["a", "b"],
            "demo",
            TensorDict(x=torch.arange(6).view(2, 3), batch_size=[2]),
            tags=[{"seq_len": 3}] * 2,
        )
        kvplane.kv_put("c", "demo", fields={"x": torch.tensor([6, 7, 8])}, tag={"seq_len": 3})
        got = kvplane.kv_batch_get(["c", "a"], "demo")
        by_meta = kvplane.kv_batch_get_by_meta(put)
        kvplane.kv_clear(["a", "zz"], "demo")
        listed = kvplane.kv_list("demo")
        controller_alive = _controller_alive(ray)
    finally:
        kvplane.close()
    return {
        "client": type(client).__name__,
        "put_fields": put.fields,
        "got": got["x"].tolist(),
        "got_nested": got["x"].is_nested,
        "by_meta": by_meta["x"].tolist(),
        "listed": listed,
        "controller_alive_before_close": controller_alive,
        "ray_left_running": ray.is_initialized(),
    }


def standalone_capacity(capacity: int) -> dict[str, Any]:
    """Fill a SimpleStorage deployment of ``capacity`` samples; overflow must leave no ghost keys."""
    import ray

    from kvplane import DataPlaneError, build_data_plane_client

    cfg = {
        "impl": "transfer_queue",
        "backend": "simple",
        "storage_capacity": capacity,
        "num_storage_units": 1,
        "claim_meta_poll_interval_s": 0.02,
        "ray_num_cpus": 2,
    }
    client = build_data_plane_client(cfg)
    try:
        full = [f"k{i}" for i in range(capacity)]
        client.put_samples(full, "p", {"x": torch.arange(capacity)})
        try:
            client.put_samples(["new0", "new1"], "p", {"x": torch.tensor([100, 101])}, tags=[{"t": 1}] * 2)
            overflow = "accepted"
        except DataPlaneError as exc:
            overflow = f"{type(exc).__name__}: {exc}"
        after_overflow = sorted(client.list_keys("p")["p"])
        client.put_samples(["k0"], "p", {"x": torch.tensor([42])})  # an upsert needs no room
        upserted = client.get_samples(["k0", "k1"], "p", ["x"])["x"].tolist()
        client.clear_samples(["k1"], "p")
        client.put_samples(["new0"], "p", {"x": torch.tensor([100])})
        after_clear = sorted(client.list_keys("p")["p"])
    finally:
        client.close()
    return {
        "overflow": overflow,
        "after_overflow": after_overflow,
        "upserted": upserted,
        "after_clear": after_clear,
        "ray_left_running": ray.is_initialized(),
    }


# ---------------------------------------------------------------------- group summaries (issue 18)
def race_produce(cfg: dict[str, Any], pid: str, writer: str, groups: int, seed: int) -> int:
    """A producer process of :mod:`tests.group_race`."""
    from tests.group_race import produce

    client = _attach(cfg)
    try:
        return produce(client, pid, writer, groups, seed)
    finally:
        client.close()


def race_evict(cfg: dict[str, Any], pid: str, rounds: int, seed: int) -> int:
    """An evictor process of :mod:`tests.group_race`."""
    from tests.group_race import evict

    client = _attach(cfg)
    try:
        return evict(client, pid, rounds, seed)
    finally:
        client.close()


def die_mid_clear(cfg: dict[str, Any], pid: str, keys: list[str]) -> None:
    """Clear ``keys`` and die (``os._exit``) after the clear but before announcing it done."""
    import os

    client = _attach(cfg)

    async def crash(*_: Any) -> None:
        os._exit(0)

    client._changes.done = crash  # the change log's last step never happens
    client.clear_samples(keys, pid)
