"""Producers and evictors racing on one partition: the scenario both tiers run (threads, processes).

Each producer writes whole groups with ``write_group`` (versions cycling 0..4), and now and then
leaves a group uncommitted (a producer that "died" mid-group) or rewrites a group it wrote before
(a retry). Each evictor runs ``evict_stale`` with ``abandon_after_s=0`` (so it evicts uncommitted
groups, possibly while their producer is still writing them: the hardest interleaving) and pops
single keys of fresh groups, as a trainer does. Afterwards the group summaries must equal a full
rescan of the tags (:func:`rescan`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from kvplane import DataPlaneClient, DataPlaneKeyError
from kvplane._groups import groups_from_tags
from kvplane.replay import evict_stale, select_groups, write_group

__all__ = ["evict", "produce", "rescan"]

GROUP_SIZE = 4


def produce(client: DataPlaneClient, pid: str, writer: str, groups: int, seed: int) -> int:
    """Write ``groups`` groups (some left uncommitted, some rewritten); returns the groups written."""
    rng = random.Random(seed)
    for i in range(groups):
        gid = f"{writer}-{rng.randrange(groups) if rng.random() < 0.2 else i}"  # 20% retries
        keys = [f"{gid}/{j}" for j in range(GROUP_SIZE)]
        fields = {"x": torch.arange(GROUP_SIZE, dtype=torch.int64)}
        if rng.random() < 0.15:  # a producer that died before committing
            tags = [{"group_id": gid, "expected_num_keys": GROUP_SIZE, "committed": False}] * GROUP_SIZE
            client.put_samples(keys, pid, fields, tags=tags)
        else:
            write_group(client, pid, keys, fields, group_id=gid, weight_version=i % 5)
    return groups


def evict(
    client: DataPlaneClient, pid: str, rounds: int, seed: int, until: Callable[[], bool] | None = None
) -> int:
    """Evict stale and abandoned groups and pop keys of fresh ones, ``rounds`` times or until
    ``until()``; returns the keys removed."""
    rng = random.Random(seed)
    removed = 0
    for _ in range(rounds):
        if until is not None and until():
            break
        removed += sum(
            len(g.keys)
            for g in evict_stale(client, pid, current_version=4, max_staleness=2, abandon_after_s=0.0)
        )
        fresh = select_groups(client, pid, current_version=4, max_staleness=2).selected
        if fresh and rng.random() < 0.1:  # a trainer pops now and then
            key = rng.choice(list(rng.choice(fresh).keys))
            try:
                client.pop([key], pid)
                removed += 1
            except DataPlaneKeyError:
                pass
    return removed


def rescan(client: DataPlaneClient, pid: str) -> dict[str, Any]:
    """The groups and depth from a full listing, next to what the summaries say."""
    full = groups_from_tags(pid, client.list_keys(pid).get(pid, {}))
    return {
        "full_depth": sum(1 for g in full if g.committed and g.is_complete),
        "full_groups": [(g.group_id, list(g.keys), g.committed) for g in full],
        "depth": client.depth(pid),
        "groups": [(g.group_id, list(g.keys), g.committed) for g in client.list_metadata(pid)],
    }
