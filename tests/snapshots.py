"""Snapshots of what a backend holds, for "a rejected call leaves no trace" assertions."""

from __future__ import annotations

import torch

from kvplane import DataPlaneKeyError


def value_picture(value):
    """A comparable, bit-exact picture of one stored value (NaN == NaN here)."""
    if isinstance(value, torch.Tensor):
        if value.is_nested:
            return ("nested", [value_picture(row) for row in value.unbind()])
        raw = value.contiguous().view(torch.uint8) if value.dim() else value.reshape(1).view(torch.uint8)
        return (str(value.dtype), tuple(value.shape), bytes(raw.numpy().tobytes()))
    return ("object", repr(value.tolist()))


def store_snapshot(client, *partitions):
    """Everything the partitions hold: keys, tags, and every field of every key, bit for bit."""
    snap = {}
    for partition in partitions:
        listing = client.list_keys(partition).get(partition)
        if listing is None:
            snap[partition] = None
            continue
        rows = {}
        for key in listing:
            try:
                td = client.get_samples([key], partition, None)
            except DataPlaneKeyError:
                rows[key] = "unreadable"
                continue
            rows[key] = {name: value_picture(td.get(name)) for name in sorted(td.keys())}
        snap[partition] = (listing, rows)
    return snap
