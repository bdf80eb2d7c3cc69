"""The TransferQueue bench code path (``kvplane_tools.bench.tq``) in quick mode on the session deployment.

Asserts the report's structure, that every round trip was exact, that every ratio is a positive
number and that the bench leaves no keys behind; never a speed (speeds live in ``kvplane bench``).
One backend (SimpleStorage) is enough: the code path is the same on MooncakeStore.
"""

from __future__ import annotations

import math

import pytest

from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
from kvplane_tools.bench import tq


def _ratios(node: object) -> list[float]:
    """The medians of every ``*ratio*`` entry anywhere in a report."""
    found: list[float] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if "ratio" in key and isinstance(value, dict) and "median" in value:
                found.append(value["median"])
            elif "ratio" in key and isinstance(value, (int, float)) and not isinstance(value, bool):
                found.append(value)
            else:
                found.extend(_ratios(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_ratios(item))
    return found


@pytest.mark.parametrize("deployment", ["simple"], indirect=True)
def test_quick_tq_bench_reports_exact_round_trips_and_positive_ratios(client: TransferQueueDataPlaneClient):
    report = tq.run_backend("simple", quick=True, client=client)

    assert report["storage_backend"] == "SimpleStorage"
    grpo = report["grpo"]
    assert grpo["exact"] == {"kvplane": True, "raw_densified": True}
    assert grpo["keys"] == 512 and grpo["bytes"] == 512 * 4096 * 12 + 512 * 4
    assert set(grpo) >= {"kvplane", "raw", "ray", "ray_zero_copy", "clone"}
    assert {"get_densify_s", "get_stack_s"} <= set(grpo["raw"])
    assert [row["mib"] for row in report["byte_sweep"]] == [16, 64]
    assert [row["n_keys"] for row in report["key_sweep"]] == [100, 1000]
    assert {"list_keys_s", "list_metadata_s", "clear_s"} <= set(report["key_sweep"][0]["kvplane"])
    assert set(report["small_ops"]["kvplane"]) == {"put_one", "get_one", "tag_only_put"}
    assert report["small_ops"]["raw"]["put_one"]["n"] == 30
    scale_targets = {f"scale_{name}" for name in report["scale"]["targets"]}
    assert set(report["targets"]) == {
        "grpo_put_ratio_vs_raw>=0.95",
        "grpo_get_ratio_vs_raw>=0.95",
        "list_metadata_100k_keys<=1s",
        *scale_targets,
    }
    assert "scale_clear_s_1M<=2s" in scale_targets and all(
        report["targets"][name] is None
        for name in scale_targets  # a quick sweep stops below 1M keys
    )
    rows = report["scale"]["rows"]
    assert [row["n_keys"] for row in rows] == [1000, 10_000] and [row["depth"] for row in rows] == [125, 1250]
    assert set(report["scale"]["slopes"]) >= {"depth_s", "select_groups_s", "cursor_page_s", "clear_s"}

    ratios = _ratios(report)
    assert len(ratios) >= 30
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios), ratios

    comparison = tq.comparison({"transfer_queue": {"simple": report}})
    assert set(comparison) == {"simple"}
    assert all(v > 0 for v in comparison["simple"].values())

    leftovers = {p: keys for p, keys in client.list_keys().items() if p.startswith("kvbench") and keys}
    assert leftovers == {}
