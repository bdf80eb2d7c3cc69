"""The batches the benchmarks (and tests) write: a GRPO batch and tiny tagged samples.

Examples:
    >>> from kvplane_tools.batches import grpo_batch, tiny_batch
    >>> keys, td, tags = grpo_batch(n=16, seq=32)
    >>> len(keys), td["input_ids"].shape, tags[8]["group_id"]
    (16, torch.Size([16, 32]), 'g1')
    >>> keys, td, tags = tiny_batch(3)
    >>> keys, tags[0]["expected_num_keys"]
    (['t0000000', 't0000001', 't0000002'], 8)
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict

__all__ = ["grpo_batch", "tiny_batch"]

Batch = tuple[list[str], TensorDict, list[dict[str, Any]]]


def grpo_batch(n: int = 512, seq: int = 4096) -> Batch:
    """The GRPO batch: ``input_ids`` int64 [n, seq], ``logprobs`` f32 [n, seq], ``advantages`` f32 [n].

    Tagged with ``group_id`` (8 samples to a group), ``weight_version`` 0 and ``seq_len``.
    """
    keys = [f"s{i:06d}" for i in range(n)]
    td = TensorDict(
        input_ids=torch.randint(0, 32000, (n, seq), dtype=torch.int64),
        logprobs=torch.randn(n, seq),
        advantages=torch.randn(n),
        batch_size=[n],
    )
    tags = [{"group_id": f"g{i // 8}", "weight_version": 0, "seq_len": seq} for i in range(n)]
    return keys, td, tags


def tiny_batch(n: int) -> Batch:
    """``n`` tiny tagged samples (``input_ids`` int64 [8] + f32 ``advantages``, 8 to a committed group)."""
    keys = [f"t{i:07d}" for i in range(n)]
    td = TensorDict(input_ids=torch.zeros(n, 8, dtype=torch.int64), advantages=torch.zeros(n), batch_size=[n])
    tags = [
        {"group_id": f"g{i // 8}", "weight_version": 1, "committed": True, "expected_num_keys": 8}
        for i in range(n)
    ]
    return keys, td, tags
