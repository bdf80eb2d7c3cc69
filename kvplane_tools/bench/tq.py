"""The TransferQueue part of the KV suite: kvplane's adapter against raw TransferQueue, Ray and memcpy.

Run only when ``KVPLANE_BENCH_TQ`` names backends (``simple``, ``mooncake_cpu`` or both)::

    KVPLANE_BENCH_TQ=simple,mooncake_cpu kvplane bench --suite kv --output benchmarks/results-2core.json

Each backend gets its own deployment, torn down afterwards. ``mooncake_cpu`` refuses to start while a
``mooncake_master`` this process did not start is running (TransferQueue's bootstrap kills every
master on the host). A ratio is kvplane's throughput over the baseline's (> 1: kvplane is faster);
contenders take turns in every repetition, and a ratio is the median of per-repetition ratios.

Design: docs/internals.md#kvplane_toolsbenchtqpy--kvplane-against-raw-transferqueue

Examples:
    >>> from kvplane_tools.bench.tq import interleave, paired_ratio
    >>> times = interleave({"a": lambda: {"op": 2.0}, "b": lambda: {"op": 1.0}}, repeats=3)
    >>> times["a"]["op"], paired_ratio(times["a"]["op"], times["b"]["op"])["median"]
    ([2.0, 2.0, 2.0], 2.0)
"""

from __future__ import annotations

import gc
import logging
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from tensordict import TensorDict

from kvplane import DataPlaneUnavailable, td_nbytes
from kvplane._tensors import densify
from kvplane.testing import transfer_queue_config
from kvplane_tools.batches import grpo_batch, tiny_batch
from kvplane_tools.bench import scale
from kvplane_tools.bench.stats import summarize

__all__ = ["bench_config", "bench_deployment", "comparison", "interleave", "paired_ratio", "run_backend"]

logger = logging.getLogger(__name__)

MiB = 2**20
Times = dict[str, dict[str, list[float]]]


def bench_config(backend: str) -> dict[str, Any]:
    """The deployment the bench starts: the test deployment (:func:`kvplane.testing.transfer_queue_config`,
    one storage unit) with generous deadlines (1 GiB and 100k-key calls) and MooncakeStore segments."""
    big = {"global_segment_size": 3 << 30, "local_buffer_size": 1 << 30} if backend == "mooncake_cpu" else {}
    return transfer_queue_config(backend, request_timeout_s=600.0, bootstrap_timeout_s=180.0, **big)


# ---------------------------------------------------------------------------------------------- timing
def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def interleave(
    contenders: Mapping[str, Callable[[], Mapping[str, Any]]], *, repeats: int, warmup: int = 1
) -> Times:
    """Run one repetition of every contender per round, in an order that rotates each round.

    Each contender returns ``{operation: seconds}`` (or a list of seconds) for its repetition; the
    result holds, per contender and operation, the seconds of the timed rounds (the first ``warmup``
    rounds are not kept).
    """
    names = list(contenders)
    times: Times = {name: defaultdict(list) for name in names}
    for round_no in range(warmup + repeats):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            result = contenders[name]()
            if round_no >= warmup:
                for op, seconds in result.items():
                    times[name][op].extend(seconds if isinstance(seconds, list) else [seconds])
        gc.collect()
    return {name: dict(ops) for name, ops in times.items()}


def paired_ratio(baseline_s: Sequence[float], candidate_s: Sequence[float]) -> dict[str, Any]:
    """The candidate's throughput over the baseline's, per paired repetition: median, min, max."""
    summary = summarize([b / c for b, c in zip(baseline_s, candidate_s, strict=True)])
    return {k: _sig(v) if isinstance(v, float) else v for k, v in summary.items()}


def _sig(value: float) -> float:
    """``value`` to 3 significant digits (ratios span 0.005 to 200)."""
    return float(f"{value:.3g}")


def _summaries(ops: Mapping[str, list[float]], nbytes: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {f"{op}_s": summarize(seconds) for op, seconds in ops.items()}
    if nbytes:
        for op, seconds in ops.items():
            out[f"{op}_gbps"] = round(nbytes / summarize(seconds)["median"] / 1e9, 3)
    return out


def _latency(times_s: list[float]) -> dict[str, Any]:
    ms = sorted(t * 1e3 for t in times_s)
    return {
        "p50_ms": round(ms[len(ms) // 2], 3),
        "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 3),
        "min_ms": round(ms[0], 3),
        "max_ms": round(ms[-1], 3),
        "n": len(ms),
    }


def _same(expected: TensorDict, got: Any) -> bool:
    """Every column of ``expected`` is in ``got`` with equal values (jagged ones compared densified)."""
    for name in expected.keys():
        value = got[name] if isinstance(got, Mapping) else got.get(name)
        value = densify(value) if isinstance(value, torch.Tensor) and value.is_nested else value
        if not isinstance(value, torch.Tensor) or value.is_nested:
            return False
        want = expected.get(name)
        if value.numel() != want.numel() or not torch.equal(value.reshape(want.shape), want):
            return False
    return True


# ---------------------------------------------------------------------------------------------- baselines
def _densified(td: TensorDict) -> dict[str, torch.Tensor]:
    """What a raw user does for dense tensors at the least cost: a zero-copy view of each uniform column."""
    return {name: densify(td.get(name)) for name in td.keys()}


def _stacked(td: TensorDict) -> dict[str, torch.Tensor]:
    """What a raw user typically writes for dense tensors: ``torch.stack(column.unbind())``."""
    out = {}
    for name in td.keys():
        value = td.get(name)
        out[name] = torch.stack(value.unbind()) if value.is_nested else value
    return out


def _ray_contenders(td: TensorDict) -> dict[str, Callable[[], dict[str, float]]]:
    """``ray.put``/``ray.get`` of the batch as a dict of tensors: default pickling, and zero-copy."""
    import ray

    plain = {name: td.get(name) for name in td.keys()}

    def default() -> dict[str, float]:
        ref, put = _timed(lambda: ray.put(plain))
        return {"put": put, "get": _timed(lambda: ray.get(ref))[1]}

    def zero_copy() -> dict[str, float]:
        # Tensors travel as NumPy views (out-of-band pickle 5 buffers): one copy into the object store
        # on put, and get maps them read-only from shared memory (RAY_ENABLE_ZERO_COPY_TORCH_TENSORS).
        ref, put = _timed(lambda: ray.put({name: value.numpy() for name, value in plain.items()}))

        def get() -> dict[str, torch.Tensor]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
                return {name: torch.from_numpy(array) for name, array in ray.get(ref).items()}

        return {"put": put, "get": _timed(get)[1]}

    return {"ray": default, "ray_zero_copy": zero_copy}


def _clone_contender(td: TensorDict) -> Callable[[], dict[str, float]]:
    """A single-thread clone of the batch: one allocation plus one copy, the physical reference."""

    def clone() -> dict[str, float]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            copy, seconds = _timed(td.clone)
        finally:
            torch.set_num_threads(threads)
        del copy
        return {"copy": seconds}

    return clone


# ---------------------------------------------------------------------------------------------- sections
def _kv_contenders(
    client: Any,
    raw: Any,
    name: str,
    keys: list[str],
    td: TensorDict,
    tags: list[dict[str, Any]] | None,
    *,
    listings: int = 0,
    dense_baselines: bool = False,
) -> dict[str, Callable[[], dict[str, Any]]]:
    """Put, get, ``listings`` listings (cheap next to a get: several per round), clear of one batch
    through kvplane and through raw TransferQueue."""
    fields = list(td.keys())
    kv_pid, raw_pid = f"kvbench-{name}", f"kvbench-raw-{name}"

    def kvplane() -> dict[str, float]:
        _, put = _timed(lambda: client.put_samples(keys, kv_pid, td, tags=tags))
        get = _timed(lambda: client.get_samples(keys, kv_pid, fields))[1]
        out = {"put": put, "get": get}
        if listings:
            out["list_keys"] = [_timed(lambda: client.list_keys(kv_pid))[1] for _ in range(listings)]
            out["list_metadata"] = [_timed(lambda: client.list_metadata(kv_pid))[1] for _ in range(listings)]
        out["clear"] = _timed(lambda: client.clear_samples(keys, kv_pid))[1]
        return out

    def transfer_queue() -> dict[str, float]:
        _, put = _timed(lambda: raw.put(keys, raw_pid, td, tags))
        got, get = _timed(lambda: raw.get(keys, raw_pid, fields))
        out = {"put": put, "get": get}
        if dense_baselines:
            out["get_densify"] = get + _timed(lambda: _densified(got))[1]
            out["get_stack"] = get + _timed(lambda: _stacked(got))[1]
        if listings:
            out["kv_list"] = [_timed(lambda: raw.list_keys(raw_pid))[1] for _ in range(listings)]
        out["clear"] = _timed(lambda: raw.clear(keys, raw_pid))[1]
        return out

    return {"kvplane": kvplane, "raw": transfer_queue}


def _exact(client: Any, raw: Any, name: str, keys: list[str], td: TensorDict, tags: Any) -> dict[str, bool]:
    """One untimed round trip each way, compared value for value with what was put."""
    fields = list(td.keys())
    kv_pid, raw_pid = f"kvbench-{name}", f"kvbench-raw-{name}"
    client.put_samples(keys, kv_pid, td, tags=tags)
    raw.put(keys, raw_pid, td, tags)
    try:
        return {
            "kvplane": _same(td, client.get_samples(keys, kv_pid, fields)),
            "raw_densified": _same(td, _densified(raw.get(keys, raw_pid, fields))),
        }
    finally:
        client.clear_samples(None, kv_pid)
        raw.drop(raw_pid)


def _kv_ratios(times: Times, ops: Sequence[str]) -> dict[str, Any]:
    return {
        f"{op}_ratio_vs_raw": paired_ratio(times["raw"][op], times["kvplane"][op])
        for op in ops
        if op in times["raw"] and op in times["kvplane"]
    }


def bench_grpo(client: Any, raw: Any, repeats: int) -> dict[str, Any]:
    """The GRPO batch through kvplane, raw TransferQueue, Ray, and a clone (see the module docstring)."""
    keys, td, tags = grpo_batch()
    nbytes = td_nbytes(td)
    contenders = {
        **_kv_contenders(client, raw, "grpo", keys, td, tags, dense_baselines=True),
        **_ray_contenders(td),
        "clone": _clone_contender(td),
    }
    times = interleave(contenders, repeats=repeats)
    kv, base = times["kvplane"], times["raw"]
    ratios = {
        "put_ratio_vs_raw": paired_ratio(base["put"], kv["put"]),
        "get_ratio_vs_raw": paired_ratio(base["get"], kv["get"]),
        "get_ratio_vs_raw_densify": paired_ratio(base["get_densify"], kv["get"]),
        "get_ratio_vs_raw_stack": paired_ratio(base["get_stack"], kv["get"]),
        "clear_ratio_vs_raw": paired_ratio(base["clear"], kv["clear"]),
    }
    for other in ("ray", "ray_zero_copy"):
        for op in ("put", "get"):
            ratios[f"{op}_ratio_vs_{other}"] = paired_ratio(times[other][op], kv[op])
    for op in ("put", "get"):
        ratios[f"{op}_ratio_vs_clone"] = paired_ratio(times["clone"]["copy"], kv[op])
        ratios[f"raw_{op}_ratio_vs_clone"] = paired_ratio(times["clone"]["copy"], base[op])
    return {
        "bytes": nbytes,
        "keys": len(keys),
        "repeats": repeats,
        "ratios": ratios,
        **{name: _summaries(ops, nbytes) for name, ops in times.items()},
        "exact": _exact(client, raw, "grpo", keys, td, tags),
    }


def bench_byte_sweep(client: Any, raw: Any, sizes_mib: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """512 keys of growing rows (int64 ``input_ids`` + f32 ``logprobs``), kvplane against raw."""
    out = []
    n = 512
    for mib in sizes_mib:
        seq = max(1, mib * MiB // (n * 12))
        td = TensorDict(
            input_ids=torch.full((n, seq), 7, dtype=torch.int64),
            logprobs=torch.full((n, seq), 0.5),
            batch_size=[n],
        )
        keys = [f"b{i:04d}" for i in range(n)]
        nbytes = td_nbytes(td)
        times = interleave(_kv_contenders(client, raw, "bytes", keys, td, None), repeats=repeats)
        out.append(
            {
                "mib": mib,
                "bytes": nbytes,
                "keys": n,
                "ratios": _kv_ratios(times, ("put", "get", "clear")),
                **{name: _summaries(ops, nbytes) for name, ops in times.items()},
            }
        )
        del td
        gc.collect()
    return out


def bench_key_sweep(client: Any, raw: Any, counts: Sequence[int], repeats: int) -> list[dict[str, Any]]:
    """Tiny tagged samples (int64 [8] + f32 scalar) at growing key counts, with listings and clears."""
    out = []
    for n in counts:
        keys, td, tags = tiny_batch(n)
        contenders = _kv_contenders(client, raw, "keys", keys, td, tags, listings=3)
        # Rounds above 10k keys take tens of seconds: two timed rounds (one in each order), no warm-up
        # (the smaller sizes warmed everything up).
        big = n > 10_000
        times = interleave(contenders, repeats=min(repeats, 2) if big else repeats, warmup=0 if big else 1)
        ratios = _kv_ratios(times, ("put", "get", "clear"))
        ratios["list_ratio_vs_raw"] = paired_ratio(times["raw"]["kv_list"], times["kvplane"]["list_keys"])
        out.append(
            {
                "n_keys": n,
                "ratios": ratios,
                **{name: _summaries(ops) for name, ops in times.items()},
                "us_per_key": {
                    f"{name}_{op}": round(summarize(seconds)["median"] / n * 1e6, 2)
                    for name, ops in times.items()
                    for op, seconds in ops.items()
                },
            }
        )
    return out


def bench_small_ops(client: Any, raw: Any, n: int) -> dict[str, Any]:
    """One-key put, get and tag-only put: kvplane and raw alternate op by op."""
    row = TensorDict(
        input_ids=torch.zeros(1, 16, dtype=torch.int64), advantages=torch.zeros(1), batch_size=[1]
    )
    fields = ["input_ids", "advantages"]
    kv_pid, raw_pid = "kvbench-small", "kvbench-raw-small"
    calls: dict[str, dict[str, Callable[[str, int], Any]]] = {
        "kvplane": {
            "put_one": lambda k, i: client.put_samples([k], kv_pid, row, tags=[{"t": i}]),
            "get_one": lambda k, i: client.get_samples([k], kv_pid, fields),
            "tag_only_put": lambda k, i: client.put_samples([k], kv_pid, None, tags=[{"u": i}]),
        },
        "raw": {
            "put_one": lambda k, i: raw.put([k], raw_pid, row, [{"t": i}]),
            "get_one": lambda k, i: raw.get([k], raw_pid, fields),
            "tag_only_put": lambda k, i: raw.put([k], raw_pid, None, [{"u": i}]),
        },
    }
    times: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in calls}
    warmup = min(10, n)
    for i in range(warmup + n):
        order = ["kvplane", "raw"] if i % 2 else ["raw", "kvplane"]
        for name in order:
            for op, call in calls[name].items():
                start = time.perf_counter()
                call(f"o{i}", i)
                seconds = time.perf_counter() - start
                if i >= warmup:
                    times[name][op].append(seconds)
    client.clear_samples(None, kv_pid)
    raw.drop(raw_pid)
    latency = {name: {op: _latency(s) for op, s in ops.items()} for name, ops in times.items()}
    ratios = {
        f"{op}_p50_ratio_vs_raw": _sig(latency["raw"][op]["p50_ms"] / latency["kvplane"][op]["p50_ms"])
        for op in calls["raw"]
    }
    return {"ops": n, "ratios": ratios, **latency}


# ---------------------------------------------------------------------------------------------- entry
def _foreign_mooncake_masters() -> list[int]:
    """PIDs of running ``mooncake_master`` processes (TransferQueue's bootstrap would kill them)."""
    import psutil  # comes with the transferqueue extra, like everything this check guards

    pids = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] == "mooncake_master" or any(
                part.endswith("mooncake_master") for part in cmdline[:1]
            ):
                pids.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def _open_client(backend: str) -> Any:
    """Bootstrap the deployment the benches measure (:func:`bench_config`)."""
    from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient

    if backend == "mooncake_cpu":
        masters = _foreign_mooncake_masters()
        if masters:
            raise DataPlaneUnavailable(
                f"a mooncake_master this benchmark did not start is running (pid {masters}); TransferQueue's "
                "MooncakeStore bootstrap would kill it. Run the mooncake_cpu benchmark when none is running"
            )
    return TransferQueueDataPlaneClient(bench_config(backend), bootstrap=True)


@contextmanager
def bench_deployment(backend: str, client: Any = None) -> Iterator[tuple[Any, float | None]]:
    """``client`` as given, or a deployment of :func:`bench_config` started now and torn down on exit.

    Yields the client and the seconds its bootstrap took (``None`` for a client passed in).

    Raises:
        DataPlaneUnavailable: The deployment cannot start, or (``mooncake_cpu``) a foreign
            ``mooncake_master`` runs.
    """
    if client is not None:
        yield client, None
        return
    started = time.perf_counter()
    owned = _open_client(backend)
    try:
        yield owned, round(time.perf_counter() - started, 2)
    finally:
        owned.close()


def run_backend(backend: str, *, quick: bool = False, client: Any = None) -> dict[str, Any]:
    """Every TransferQueue measurement on one backend (``simple``, ``mooncake_cpu`` or ``columnar``;
    ``columnar`` is measured against raw SimpleStorage started beside it).

    Args:
        backend: The kvplane backend name.
        quick: Small sizes and few repeats (a smoke run).
        client: A TransferQueue client opened (bootstrapped) in this process to measure on; by
            default the bench starts its own deployment and tears it down afterwards.

    Raises:
        DataPlaneUnavailable: The deployment cannot start (or a foreign ``mooncake_master`` runs).
    """
    from kvplane_tools.bench._simple_beside import SimpleBeside
    from kvplane_tools.bench.raw_tq import RawKV

    with bench_deployment(backend, client) as (client, bootstrap_s):
        # columnar's anchor is raw SimpleStorage (issue 17), on a unit started beside it
        raw = SimpleBeside() if backend == "columnar" else RawKV(client)
        # Even repeat counts: with two contenders each goes first equally often.
        report: dict[str, Any] = {
            "storage_backend": raw.storage_backend,
            "config": bench_config(backend),
            "bootstrap_s": bootstrap_s,
            "grpo": bench_grpo(client, raw, 3 if quick else 20),
            "byte_sweep": bench_byte_sweep(
                client, raw, [16, 64] if quick else [16, 64, 256, 1024], 2 if quick else 4
            ),
            "key_sweep": bench_key_sweep(
                client, raw, [100, 1000] if quick else [100, 1000, 10_000, 100_000], 2 if quick else 4
            ),
            "small_ops": bench_small_ops(client, raw, 30 if quick else 300),
            "scale": scale.report(client, quick=quick, clear_target_s=2.0),
        }
        if isinstance(raw, SimpleBeside):
            raw.close()
    report["targets"] = _targets(report)
    return report


def _targets(report: Mapping[str, Any]) -> dict[str, Any]:
    ratios = report["grpo"]["ratios"]
    big = [row for row in report["key_sweep"] if row["n_keys"] == 100_000]
    if report["config"]["backend"] == "columnar":  # issue 17, against raw SimpleStorage
        gib = [row for row in report["byte_sweep"] if row["mib"] == 1024]
        return {
            "grpo_get_ratio_vs_raw_simple>=5": ratios["get_ratio_vs_raw"]["median"] >= 5,
            "grpo_put_ratio_vs_raw_simple>=1.5": ratios["put_ratio_vs_raw"]["median"] >= 1.5,
            "read_1gib>=2GB/s": gib[0]["kvplane"]["get_gbps"] >= 2.0 if gib else None,
        }
    return {
        "grpo_put_ratio_vs_raw>=0.95": ratios["put_ratio_vs_raw"]["median"] >= 0.95,
        "grpo_get_ratio_vs_raw>=0.95": ratios["get_ratio_vs_raw"]["median"] >= 0.95,
        "list_metadata_100k_keys<=1s": big[0]["kvplane"]["list_metadata_s"]["median"] <= 1.0 if big else None,
        **{f"scale_{name}": met for name, met in report["scale"]["targets"].items()},
    }


def comparison(report: Mapping[str, Any]) -> dict[str, Any]:
    """GRPO put/get of every implementation of one ``kv`` report, side by side (GB/s and ratios).

    Rows: ``memory`` (embedded) and each TransferQueue backend measured; columns: GB/s and throughput
    ratios against raw TransferQueue (the same backend; SimpleStorage for the embedded one), Ray
    (default and zero-copy) and a single-thread clone. A TransferQueue backend's ratios are its
    paired medians (``grpo.ratios``: measured interleaved); the embedded backend's are ratios of
    medians against the TransferQueue run (measured before it, in the same process).
    """
    tq_runs = {b: r["grpo"] for b, r in report.get("transfer_queue", {}).items() if "grpo" in r}
    if not tq_runs:
        return {}
    baselines = ("raw", "ray", "ray_zero_copy", "clone")
    rows: dict[str, Any] = {}
    memory = report.get("memory", {}).get("grpo")
    if memory:
        run = tq_runs.get("simple") or next(iter(tq_runs.values()))
        row: dict[str, Any] = {}
        for op in ("put", "get"):
            seconds = memory[f"{op}_s"]["median"]
            row[f"{op}_gbps"] = round(run["bytes"] / seconds / 1e9, 3)
            for other in baselines:
                base = run[other]["copy_s" if other == "clone" else f"{op}_s"]["median"]
                row[f"{op}_ratio_vs_{other}"] = _sig(base / seconds)
        rows["memory"] = row
    for backend, run in tq_runs.items():
        row = {}
        for op in ("put", "get"):
            row[f"{op}_gbps"] = run["kvplane"][f"{op}_gbps"]
            for other in baselines:
                row[f"{op}_ratio_vs_{other}"] = run["ratios"][f"{op}_ratio_vs_{other}"]["median"]
        rows[backend] = row
    return rows
