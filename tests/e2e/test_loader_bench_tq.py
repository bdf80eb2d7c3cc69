"""The loader bench's TransferQueue section (``kvplane_tools.bench.loader.bench_transfer_queue``),
small, on the session deployment.

Asserts the report's structure, that every loader pass (kvplane's and TransferQueue's own) delivered
every sample exactly once, that every ratio is a positive finite number, and that the bench leaves no
key behind in any partition, kvplane's plan and control partitions included; never a speed (speeds
live in ``kvplane bench``).
"""

from __future__ import annotations

import math

import pytest

from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
from kvplane_tools.bench import loader as bench
from kvplane_tools.bench.raw_tq import RawKV

LOADERS = {"kvplane_dp1", "kvplane_dp1_micro64", "tq_loader", "tq_loader_micro64"}


def _positive_finite(summary: dict[str, float]) -> bool:
    return all(math.isfinite(summary[k]) and summary[k] > 0 for k in ("median", "min", "max"))


@pytest.mark.parametrize("deployment", ["simple"], indirect=True)
def test_small_tq_loader_bench_delivers_exactly_once_and_reports_positive_ratios(
    client: TransferQueueDataPlaneClient,
):
    report = bench.bench_transfer_queue("simple", small=True, client=client)

    assert report["storage_backend"] == "SimpleStorage"
    assert report["tq_sampler"] == "SequentialSampler"
    assert report["bootstrap_s"] is None and report["config"] is None  # the session's deployment

    throughput = report["throughput"]
    steps, rounds = throughput["batch"]["steps_per_run"], throughput["rounds"]
    assert throughput["batch"]["samples"] == 512 and throughput["batch"]["bytes"] == 512 * 4096 * 12 + 512 * 4
    assert (
        set(throughput["samples_per_s"])
        == set(throughput["steady_samples_per_s"])
        == LOADERS | {"raw_kv_batch_get"}
    )
    assert all(rate > 0 for rate in throughput["steady_samples_per_s"].values())
    # Every pass, the warm-up round's included, consumed the same stored samples again, each once.
    expected = steps * 512
    assert throughput["deliveries"] == {
        name: {"expected": expected, "delivered": [expected] * (rounds + 1), "exactly_once": True}
        for name in LOADERS
    }

    assert set(throughput["ratios"]) == set(throughput["whole_run_ratios"]) == set(bench.TQ_RATIOS)
    for summary in [*throughput["ratios"].values(), *throughput["whole_run_ratios"].values()]:
        assert summary["n"] == rounds and _positive_finite(summary), summary

    assert report["latency_gap_s"] == bench.TQ_LATENCY_GAP_S
    for run in ("latency", "latency_gap_10ms"):
        assert set(report[run]) == {"dp1", "dp2"}
        for world, latency in report[run].items():
            assert latency["samples"] == 20, (run, world)
            assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"], latency

    for workers in (0, 2):  # spawned workers attach and deliver: a time, not a refusal
        first = report["first_batch"][f"num_workers_{workers}"]
        assert first["num_workers"] == workers and _positive_finite(first["first_batch_s"]), first

    assert set(report["targets"]) == {
        "loader_ratio_vs_raw_get>=0.9",
        "loader_ratio_vs_tq_streaming_dataloader>=2",
        "producer_to_consumer_p99<50ms",
    }
    assert all(isinstance(met, bool) for met in report["targets"].values())

    # TransferQueue's own listing shows kvplane's internal partitions too (plans, control records).
    listing = RawKV(client).list_keys(None)
    assert {p: keys for p, keys in listing.items() if "bench-loader" in p and keys} == {}
