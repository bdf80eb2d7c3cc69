"""Deployments of their own, each in a fresh process that starts (and must stop) its own Ray.

They use SimpleStorage only: a second MooncakeStore deployment would kill the session's
``mooncake_master`` (TransferQueue kills every master on the host when it starts one).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import kvplane

from . import workers

TIMEOUT_S = 300


def _in_fresh_process(fn: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return executor.submit(fn, *args).result(timeout=TIMEOUT_S)


def test_a_bootstrap_without_enough_ray_cpus_fails_fast_and_says_how_many():
    seen = _in_fresh_process(workers.standalone_cpu_check, 2, 1)
    assert "needs 3 free Ray CPUs (1 controller + 2 storage unit(s))" in seen["error"]
    assert "1 free of 1" in seen["error"]
    assert seen["ray_left_running"] is False  # kvplane started that Ray, so it stopped it again


def test_the_example_yaml_starts_everything_and_close_stops_everything():
    yaml_path = Path(kvplane.__file__).parent / "examples" / "transfer_queue.yaml"
    seen = _in_fresh_process(workers.standalone_facade, str(yaml_path))
    assert seen["client"] == "TransferQueueDataPlaneClient"
    assert seen["put_fields"] == ["x"]
    assert seen["got"] == [[6, 7, 8], [0, 1, 2]] and seen["got_nested"] is False
    assert seen["by_meta"] == [[0, 1, 2], [3, 4, 5]]
    assert seen["listed"] == {"demo": {"b": {"seq_len": 3}, "c": {"seq_len": 3}}}
    assert seen["controller_alive_before_close"] is True
    assert seen["ray_left_running"] is False


def test_q12_a_full_store_rejects_new_keys_without_leaving_ghosts():
    seen = _in_fresh_process(workers.standalone_capacity, 4)
    assert seen["overflow"].startswith("DataPlaneWriteError") and "capacity" in seen["overflow"]
    assert seen["after_overflow"] == ["k0", "k1", "k2", "k3"]  # TransferQueue would list new0, new1
    assert seen["upserted"] == [42, 1]
    assert seen["after_clear"] == ["k0", "k2", "k3", "new0"]
    assert seen["ray_left_running"] is False
