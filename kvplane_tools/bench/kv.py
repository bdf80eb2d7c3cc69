"""KV suite: put/get throughput, sweeps, small-op latency and metadata scale, as ratios.

Measured side by side in one run on the embedded backend, and on TransferQueue when
``KVPLANE_BENCH_TQ=simple`` or ``mooncake_cpu`` asks for it (:mod:`kvplane_tools.bench.tq`). Every
figure is a median over repeats with its min and max.

Design: docs/internals.md#kvplane_toolsbenchkvpy--the-kv-suite

Examples:
    >>> from kvplane_tools.bench import kv
    >>> report = kv.run(quick=True)
    >>> sorted(report["memory"])  # doctest: +NORMALIZE_WHITESPACE
    ['byte_sweep', 'eviction_memory', 'grpo', 'key_sweep', 'memory_per_key_bytes',
     'roundtrip_vs_clone', 'scale', 'small_ops']
    >>> report["memory"]["eviction_memory"]["retained_fraction"] <= 2 / 256
    True
    >>> [row["n_keys"] for row in report["memory"]["scale"]["rows"]]
    [1000, 10000]
    >>> report["memory"]["memory_per_key_bytes"] <= 200
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict

from kvplane import DataPlaneClient, build_data_plane_client, td_nbytes
from kvplane_tools.batches import grpo_batch, tiny_batch
from kvplane_tools.bench import scale
from kvplane_tools.bench.backends import per_backend, requested_backends
from kvplane_tools.bench.stats import measure, ratio, summarize

__all__ = ["bench_client", "plot", "run"]

MiB = 2**20


def _gbps(nbytes: int, summary: dict[str, Any]) -> float:
    return round(nbytes / summary["median"] / 1e9, 3)


def _put_get(
    client: DataPlaneClient,
    partition: str,
    keys: list[str],
    td: TensorDict,
    tags: list[dict[str, Any]] | None,
    repeats: int,
) -> dict[str, Any]:
    fields = list(td.keys())
    nbytes = td_nbytes(td)
    put = measure(lambda: client.put_samples(keys, partition, td, tags=tags), repeats=repeats)
    get = measure(lambda: client.get_samples(keys, partition, fields), repeats=repeats)
    clear = measure(
        lambda: client.clear_samples(keys, partition),
        repeats=repeats,
        setup=lambda: client.put_samples(keys, partition, td, tags=tags),
    )
    client.clear_samples(None, partition)
    return {
        "bytes": nbytes,
        "keys": len(keys),
        "put_s": put,
        "get_s": get,
        "clear_s": clear,
        "put_gbps": _gbps(nbytes, put),
        "get_gbps": _gbps(nbytes, get),
        "put_samples_per_s": round(len(keys) / put["median"]),
        "get_samples_per_s": round(len(keys) / get["median"]),
    }


def bench_grpo(client: DataPlaneClient, repeats: int) -> dict[str, Any]:
    """Put and get of the GRPO batch through ``client``."""
    keys, td, tags = grpo_batch()
    return _put_get(client, "bench-grpo", keys, td, tags, repeats)


def bench_roundtrip_vs_clone(client: DataPlaneClient, mib: int, repeats: int) -> dict[str, Any]:
    """Put + get of ``mib`` MiB against single-thread ``torch.clone`` of the same tensor."""
    n = 512
    x = torch.randint(0, 1 << 30, (n, mib * MiB // (n * 8)), dtype=torch.int64)
    keys = [f"r{i}" for i in range(n)]
    td = TensorDict(x=x, batch_size=[n])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clone = measure(x.clone, repeats=repeats)
        copy_into = torch.empty_like(x)
        prefaulted = measure(lambda: copy_into.copy_(x), repeats=repeats)

        def roundtrip() -> None:
            client.put_samples(keys, "bench-rt", td)
            client.get_samples(keys, "bench-rt", ["x"])

        rt = measure(roundtrip, repeats=repeats)
    finally:
        torch.set_num_threads(threads)
        client.clear_samples(None, "bench-rt")
    nbytes = x.numel() * 8
    return {
        "bytes": nbytes,
        "clone_gbps": _gbps(nbytes, clone),
        "copy_prefaulted_gbps": _gbps(nbytes, prefaulted),
        "roundtrip_gbps": _gbps(nbytes, rt),
        "roundtrip_s": rt,
        "ratio_vs_clone": ratio(clone["median"], rt["median"]),
        "ratio_vs_prefaulted_copy": ratio(prefaulted["median"], rt["median"]),
        "target": 0.45,
        "meets_target": ratio(clone["median"], rt["median"]) >= 0.45,
    }


def bench_byte_sweep(client: DataPlaneClient, sizes_mib: list[int], repeats: int) -> list[dict[str, Any]]:
    """512 keys of growing rows: int64 ``input_ids`` + f32 ``logprobs`` (2/3 and 1/3 of the bytes)."""
    out = []
    n = 512
    for mib in sizes_mib:
        seq = max(1, mib * MiB // (n * 12))
        td = TensorDict(
            input_ids=torch.zeros(n, seq, dtype=torch.int64), logprobs=torch.zeros(n, seq), batch_size=[n]
        )
        row = _put_get(client, "bench-bytes", [f"b{i}" for i in range(n)], td, None, repeats)
        out.append({"mib": mib, **row})
    return out


def bench_key_sweep(client: DataPlaneClient, counts: list[int], repeats: int) -> list[dict[str, Any]]:
    """Tiny samples (int64 [8] + f32 scalar, tagged) at growing key counts, plus metadata listings."""
    out = []
    for n in counts:
        keys, td, tags = tiny_batch(n)
        row = _put_get(client, "bench-keys", keys, td, tags, repeats)
        client.put_samples(keys, "bench-keys", td, tags=tags)
        row["kv_list_s"] = measure(lambda: client.list_keys("bench-keys"), repeats=repeats)
        row["list_metadata_s"] = measure(lambda: client.list_metadata("bench-keys"), repeats=repeats)
        client.clear_samples(None, "bench-keys")
        out.append({"n_keys": n, **row})
    return out


def _latencies(fn: Callable[[int], Any], n: int) -> dict[str, Any]:
    for i in range(min(10, n)):
        fn(i)
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "p50_ms": round(times[len(times) // 2], 4),
        "p99_ms": round(times[int(len(times) * 0.99) - 1], 4),
        **{k: round(v, 4) for k, v in summarize(times).items() if k in ("min", "max")},
    }


def bench_small_ops(client: DataPlaneClient, n: int) -> dict[str, Any]:
    """Latency of one-key writes and reads."""
    row = TensorDict(
        input_ids=torch.zeros(1, 16, dtype=torch.int64), advantages=torch.zeros(1), batch_size=[1]
    )
    put = _latencies(lambda i: client.put_samples([f"o{i}"], "bench-small", row, tags=[{"t": i}]), n)
    get = _latencies(lambda i: client.get_samples([f"o{i}"], "bench-small", ["input_ids", "advantages"]), n)
    tag = _latencies(lambda i: client.put_samples([f"o{i}"], "bench-small", None, tags=[{"u": i}]), n)
    client.clear_samples(None, "bench-small")
    return {"put_one": put, "get_one": get, "tag_only_put": tag}


def bench_eviction_memory(client: Any, row_kib: int, rows: int = 256) -> dict[str, Any]:
    """Bytes retained after one put of ``rows`` rows, and after evicting all but the last, one by one."""
    keys = [f"e{i}" for i in range(rows)]
    client.put_samples(keys, "bench-evict", {"x": torch.zeros(rows, row_kib * 256)})
    after_put = client.retained_nbytes()
    for key in keys[:-1]:
        client.evict([key], "bench-evict")
    after_evicting = client.retained_nbytes()
    client.clear_samples(None, "bench-evict")
    return {
        "rows": rows,
        "row_bytes": row_kib * 1024,
        "retained_after_put_bytes": after_put,
        f"retained_after_evicting_{rows - 1}_bytes": after_evicting,
        "retained_fraction": round(after_evicting / after_put, 6),
    }


def bench_client(client: DataPlaneClient, *, quick: bool) -> dict[str, Any]:
    """Every backend-agnostic measurement on one client."""
    repeats = 3 if quick else 7
    return {
        "grpo": bench_grpo(client, repeats),
        "roundtrip_vs_clone": bench_roundtrip_vs_clone(client, 32 if quick else 256, repeats),
        "byte_sweep": bench_byte_sweep(
            client, [16] if quick else [16, 64, 256, 1024], repeats if quick else 3
        ),
        "key_sweep": bench_key_sweep(client, [100, 1000] if quick else [100, 1000, 10_000, 100_000], 3),
        "small_ops": bench_small_ops(client, 50 if quick else 300),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    """The KV suite: the embedded backend always; TransferQueue when ``KVPLANE_BENCH_TQ`` names backends."""
    client = build_data_plane_client({"impl": "embedded"})
    try:
        report: dict[str, Any] = {"memory": bench_client(client, quick=quick)}
        report["memory"]["eviction_memory"] = bench_eviction_memory(client, 64 if quick else 1024)
        report["memory"]["scale"] = scale.report(client, quick=quick)
        report["memory"]["memory_per_key_bytes"] = scale.overhead_per_key(20_000 if quick else 100_000)
    finally:
        client.close()
    tq_backends = requested_backends()
    if tq_backends:
        from kvplane_tools.bench import tq

        report["transfer_queue"] = per_backend(tq_backends, lambda b: tq.run_backend(b, quick=quick))
        report["comparison"] = tq.comparison(report)
    keys_100k = [r for r in report["memory"]["key_sweep"] if r["n_keys"] == 100_000]
    report["targets"] = {
        "memory_roundtrip_ratio_vs_clone>=0.45": report["memory"]["roundtrip_vs_clone"]["meets_target"],
        "list_metadata_100k_keys<=1s": keys_100k[0]["list_metadata_s"]["median"] <= 1.0
        if keys_100k
        else None,
    }
    report["targets"]["memory_per_key<=200B"] = report["memory"]["memory_per_key_bytes"] <= 200
    for name, met in report["memory"]["scale"]["targets"].items():
        report["targets"][f"memory_{name}"] = met
    for backend, result in report.get("transfer_queue", {}).items():
        for name, met in result.get("targets", {}).items():
            report["targets"][f"tq_{backend}_{name}"] = met
    return report


def plot(report: dict[str, Any], path: str) -> None:
    """Draw the scale sweeps of a ``kv`` report (embedded and each TransferQueue backend), log-log."""
    sweeps = {"embedded": report["memory"]["scale"]["rows"]}
    for backend, result in report.get("transfer_queue", {}).items():
        if "scale" in result:
            sweeps[f"transfer_queue {backend}"] = result["scale"]["rows"]
    scale.plot(sweeps, path)
