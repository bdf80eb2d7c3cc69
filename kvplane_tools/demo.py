"""``kvplane demo``: a small but real GRPO-style data flow through kvplane.

Threads in one process, on the embedded backend (or TransferQueue with ``--config transfer_queue``):
producers write tagged rollout groups with :func:`kvplane.replay.write_group`; a replay buffer admits
fresh, complete groups and evicts stale ones from metadata alone; DP ranks iterate
:class:`~loaders.StreamingDataLoader` with ``balance="tokens"``, train on their shard and pop it. The
report: trained samples/s and per-step rank imbalance next to NeMo-RL's contiguous split. Options and
pre-flight checks: the ``demo`` command of :mod:`kvplane_tools.commands`.

Design: docs/internals.md#kvplane_toolsdemopy--the-demos-data-flow
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from kvplane import (
    DataPlaneConfig,
    KVBatchMeta,
    MetricsDataPlaneClient,
    build_data_plane_client,
    shard_meta_for_dp,
)
from kvplane._deps import require
from kvplane.replay import keys_of, select_groups, write_group
from loaders import StreamingDataLoader, StreamingDataset

__all__ = ["run"]

logger = logging.getLogger(__name__)

_TASK = "train"
_FIELDS = ["input_ids", "logprobs", "advantages", "admitted"]


@dataclass
class _Flow:
    """State shared by the demo's threads."""

    args: argparse.Namespace
    client: MetricsDataPlaneClient
    partition: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0
    groups_written: int = 0
    groups_admitted: int = 0
    groups_evicted: int = 0
    samples_trained: int = 0
    tokens: dict[int, dict[int, int]] = field(default_factory=dict)  # step -> rank -> tokens
    lengths: dict[int, dict[str, int]] = field(default_factory=dict)  # step -> sample -> length
    errors: list[BaseException] = field(default_factory=list)

    def guarded(self, fn: Any, *args: Any) -> None:
        try:
            fn(self, *args)
        except BaseException as exc:  # surfaced by run() after the threads stop (one line or a traceback)
            logger.debug("demo thread failed", exc_info=True)
            self.errors.append(exc)
            self.stop.set()


def _produce(flow: _Flow) -> None:
    """Rollout workers: write whole groups, tagged, at most ~4 steps ahead of the trainer."""
    args, rng = flow.args, random.Random(flow.args.seed)
    limit = 4 * args.batch_size // args.group_size
    prompt = 0
    while not flow.stop.is_set():
        with flow.lock:
            ahead = flow.groups_written - flow.groups_evicted - flow.samples_trained // args.group_size
        if ahead >= limit:
            time.sleep(0.002)
            continue
        with flow.lock:
            lag = args.max_staleness + 1 if rng.random() < args.stale_fraction else 0
            version = max(0, flow.version - lag) if lag else flow.version
        lengths = [max(16, min(2048, int(rng.lognormvariate(5.5, 0.8)))) for _ in range(args.group_size)]
        keys = [f"p{prompt:06d}_g{i}" for i in range(args.group_size)]
        write_group(
            flow.client,
            flow.partition,
            keys,
            {
                "input_ids": [torch.randint(0, 32000, (n,)) for n in lengths],
                "logprobs": [torch.randn(n) for n in lengths],
                "advantages": torch.randn(args.group_size),
            },
            group_id=f"p{prompt:06d}",
            weight_version=version,
            extra_tags=[{"seq_len": n} for n in lengths],
        )
        prompt += 1
        with flow.lock:
            flow.groups_written += 1


def _replay(flow: _Flow) -> None:
    """The replay buffer: admit fresh committed groups, evict stale ones — by metadata only."""
    admitted: set[str] = set()
    while not flow.stop.is_set():
        with flow.lock:
            current = flow.version
        fresh, stale = select_groups(
            flow.client, flow.partition, current_version=current, max_staleness=flow.args.max_staleness
        )
        new = [g for g in fresh if g.group_id not in admitted]
        if new:
            keys = keys_of(new)
            flow.client.put_samples(
                keys, flow.partition, {"admitted": torch.ones(len(keys), dtype=torch.bool)}
            )
            admitted.update(g.group_id for g in new)
        old = [g for g in stale if g.group_id not in admitted]
        if old:
            flow.client.evict(keys_of(old), flow.partition)
        with flow.lock:
            flow.groups_admitted += len(new)
            flow.groups_evicted += len(old)
        if not new and not old:
            time.sleep(0.002)


def _train(flow: _Flow, rank: int, progress: tqdm | None) -> None:
    """One DP rank: iterate balanced micro-batches, 'train', pop what was trained on."""
    args = flow.args
    dataset = StreamingDataset(
        flow.client,
        partition_id=flow.partition,
        task_name=_TASK,
        fields=["input_ids", "advantages", "admitted"],
        batch_size=args.batch_size,
        dp_rank=rank,
        dp_world=args.dp_world,
        balance="tokens",
        timeout_s=60.0,
    )
    loader = StreamingDataLoader(dataset)
    for td, meta in loader:
        step = meta.extra_info["step"]
        if step >= args.steps or flow.stop.is_set():
            break
        lengths = meta.sequence_lengths or []
        tokens = sum(lengths)
        assert td.batch_size[0] == meta.size and bool(td["admitted"].all())
        time.sleep(tokens * args.work_us_per_token * 1e-6)
        if meta.sample_ids:
            flow.client.pop(meta.sample_ids, flow.partition)
        with flow.lock:
            flow.tokens.setdefault(step, {}).setdefault(rank, 0)
            flow.tokens[step][rank] += tokens
            flow.lengths.setdefault(step, {}).update(zip(meta.sample_ids, lengths, strict=True))
            flow.samples_trained += meta.size
            last = meta.extra_info["micro_batch_index"] == meta.extra_info["num_micro_batches"] - 1
            if last and rank == 0:
                flow.version += 1
        if last and rank == 0 and progress is not None:
            progress.update(1)


def _default_split_loads(lengths: dict[str, int], dp_world: int) -> list[int]:
    """Per-rank tokens under NeMo-RL's default split of the step's samples, in production order."""
    ids = sorted(lengths)
    meta = KVBatchMeta("x", None, ids, sequence_lengths=[lengths[i] for i in ids])
    shards, _ = shard_meta_for_dp(meta, dp_world=dp_world)
    return [sum(s.sequence_lengths or []) for s in shards]


def _report(flow: _Flow, wall_s: float) -> dict[str, Any]:
    args = flow.args
    steps = sorted(s for s in flow.tokens if len(flow.tokens[s]) == args.dp_world)
    per_step = []
    for s in steps:
        loads = [flow.tokens[s].get(r, 0) for r in range(args.dp_world)]
        default = _default_split_loads(flow.lengths[s], args.dp_world)
        mean = sum(loads) / len(loads)
        per_step.append(
            {
                "step": s,
                "tokens_per_rank": loads,
                "nemo_default_tokens_per_rank": default,
                "imbalance": round(max(loads) / mean, 4) if mean else None,
                "nemo_default_imbalance": round(max(default) / mean, 4) if mean else None,
            }
        )
    balanced = [p["imbalance"] for p in per_step if p["imbalance"]]
    default = [p["nemo_default_imbalance"] for p in per_step]
    stats = flow.client.snapshot()
    return {
        "backend": DataPlaneConfig.load(args.config).display_name,
        "steps": len(steps),
        "dp_world": args.dp_world,
        "batch_size": args.batch_size,
        "samples_trained": flow.samples_trained,
        "samples_per_s": round(flow.samples_trained / wall_s, 1),
        "wall_s": round(wall_s, 3),
        "imbalance_mean": round(sum(balanced) / len(balanced), 4) if balanced else None,
        "imbalance_worst": max(balanced) if balanced else None,
        "nemo_default_imbalance_mean": round(sum(default) / len(default), 4) if default else None,
        "nemo_default_imbalance_worst": max(default) if default else None,
        "groups_written": flow.groups_written,
        "groups_admitted": flow.groups_admitted,
        "groups_evicted_stale": flow.groups_evicted,
        "bytes_outstanding": stats["bytes_outstanding"],
        "peak_bytes_outstanding": stats["peak_bytes_outstanding"],
        "data_plane_ops": stats["total_ops"],
        "per_step": per_step,
    }


def _print_report(report: dict[str, Any]) -> None:
    print(
        f"kvplane demo on {report['backend']}: {report['steps']} steps x {report['batch_size']} samples "
        f"over {report['dp_world']} DP ranks in {report['wall_s']} s"
    )
    rows = [
        ("trained samples / s", report["samples_per_s"]),
        (
            "rank imbalance, kvplane balanced (mean / worst)",
            f"{report['imbalance_mean']} / {report['imbalance_worst']}",
        ),
        (
            "rank imbalance, NeMo-RL default split (mean / worst)",
            f"{report['nemo_default_imbalance_mean']} / {report['nemo_default_imbalance_worst']}",
        ),
        (
            "groups written / admitted / evicted as stale",
            f"{report['groups_written']} / {report['groups_admitted']} / {report['groups_evicted_stale']}",
        ),
        (
            "bytes outstanding now / peak",
            f"{report['bytes_outstanding']} / {report['peak_bytes_outstanding']}",
        ),
        ("data plane operations", report["data_plane_ops"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def _plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in report["per_step"]]
    world = report["dp_world"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / world
    for r in range(world):
        ax.bar(
            [s + (r - (world - 1) / 2) * width for s in steps],
            [p["tokens_per_rank"][r] for p in report["per_step"]],
            width,
            label=f"rank {r}",
        )
    ax.plot(
        steps,
        [max(p["nemo_default_tokens_per_rank"]) for p in report["per_step"]],
        "k--o",
        markersize=3,
        label="NeMo-RL default split: most-loaded rank",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("tokens")
    ax.set_title(
        f"per-rank token load (kvplane balanced: worst {report['imbalance_worst']}x mean; "
        f"NeMo-RL default: worst {report['nemo_default_imbalance_worst']}x)"
    )
    ax.legend(ncol=min(world + 1, 5), fontsize="small", loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Run the demo; print the report (and draw it with ``--plot``). Returns 0 on success.

    ``args`` were checked when they were parsed; what needs the environment is checked here, before
    any thread starts: ``--plot`` needs matplotlib, a config its backend's packages (the factory).
    """
    if args.plot:
        require("matplotlib", purpose="kvplane demo --plot")
    client = MetricsDataPlaneClient(build_data_plane_client(args.config or {"impl": "embedded"}))
    flow = _Flow(args, client, partition=f"demo-{uuid.uuid4().hex[:8]}")
    client.register_partition(flow.partition, _FIELDS, num_samples=None, consumer_tasks=[_TASK])
    progress = tqdm(total=args.steps, desc="kvplane demo", unit="step", disable=None)
    threads = [threading.Thread(target=flow.guarded, args=(fn,), daemon=True) for fn in (_produce, _replay)]
    ranks = [
        threading.Thread(target=flow.guarded, args=(_train, r, progress), daemon=True)
        for r in range(args.dp_world)
    ]
    start = time.perf_counter()
    try:
        for t in threads + ranks:
            t.start()
        for t in ranks:
            t.join()
        wall = time.perf_counter() - start
    finally:
        flow.stop.set()
        for t in threads:
            t.join(timeout=30)
        progress.close()
    try:
        if flow.errors:
            raise flow.errors[0]
        report = _report(flow, wall)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_report(report)
        if args.plot:
            _plot(report, args.plot)
            print(f"  plot written to {args.plot}")
    finally:
        client.clear_samples(None, flow.partition)
        client.clear_samples(None, StreamingDataset.plan_partition_id(flow.partition, _TASK))
        client.close()
    return 0
