"""The embedded backend's own guarantees (issue 16): typed write failures, memory that comes back.

The lock-deadline test lives in tests/unit/test_concurrency.py; backend-neutral bad input in
tests/unit/test_bad_input.py.
"""

from __future__ import annotations

import threading

import pytest
import torch

from kvplane import DataPlaneWriteError
from kvplane.adapters.memory import MemoryDataPlaneClient

MIB = 1 << 20


@pytest.mark.parametrize("value", [threading.Lock(), (i for i in range(3))], ids=["lock", "generator"])
def test_an_uncopyable_object_is_a_write_error_with_its_cause(client, pid, value):
    with pytest.raises(DataPlaneWriteError, match="cannot be copied into the store") as caught:
        client.put_samples(["a"], pid, {"obj": [value]})
    assert isinstance(caught.value.__cause__, TypeError)
    assert client.list_keys(pid) == {}


def test_evicting_most_of_a_put_returns_most_of_its_memory(client, pid):
    keys = [f"k{i}" for i in range(256)]
    client.put_samples(keys, pid, {"x": torch.zeros(256, MIB // 4)})  # 256 rows of 1 MiB
    assert client.retained_nbytes() == 256 * MIB
    client.pop(keys[:128], pid)
    assert client.retained_nbytes() == 128 * MIB  # half gone: compacted
    client.pop(keys[128:255], pid)
    assert client.retained_nbytes() == 1 * MIB  # the one row left, alone
    assert client.get_samples(["k255"], pid, ["x"])["x"].shape == (1, MIB // 4)
    client.pop(["k255"], pid)
    assert client.retained_nbytes() == 0


def test_compaction_keeps_every_remaining_row_and_overwrites_release_rows(client, pid):
    keys = [f"k{i}" for i in range(10)]
    client.put_samples(keys, pid, {"x": torch.arange(10.0).unsqueeze(1).expand(10, 4).contiguous()})
    client.put_samples(keys[:3], pid, {"x": torch.full((3, 4), -1.0)})  # overwrites release old rows
    client.pop(keys[3:8], pid)  # 8 of the first chunk's rows gone: compacted to 2
    assert client.retained_nbytes() == (3 + 2) * 4 * 4
    got = client.get_samples(keys[:3] + keys[8:], pid, ["x"])["x"][:, 0].tolist()
    assert got == [-1.0, -1.0, -1.0, 8.0, 9.0]


def test_rows_of_one_put_read_back_in_any_order_after_compaction(client, pid):
    # A read of keys that one put wrote takes each column whole from that put (no per-key cells).
    keys = [f"k{i}" for i in range(8)]
    columns = {
        "x": torch.arange(8).unsqueeze(1).expand(8, 3).contiguous(),
        "ragged": [torch.full((i + 1,), float(i)) for i in range(8)],
        "text": [f"t{i}" for i in range(8)],
    }
    client.put_samples(keys, pid, columns)
    client.pop(keys[1:6], pid)  # 5 of 8 rows gone: the dense column is compacted to rows 0, 6, 7
    got = client.get_samples(["k7", "k0", "k6"], pid, None)
    assert sorted(got.keys()) == ["ragged", "text", "x"]
    assert got["x"][:, 0].tolist() == [7, 0, 6]
    assert [row.tolist() for row in got["ragged"].unbind()] == [[7.0] * 8, [0.0], [6.0] * 7]
    assert got.get("text").tolist() == ["t7", "t0", "t6"]
    client.put_samples(["k6"], pid, {"x": torch.full((1, 3), -1)})  # k6 now holds rows of two puts
    assert client.get_samples(["k6", "k7"], pid, ["x", "text"])["x"][:, 0].tolist() == [-1, 7]
    assert client.get_samples(["k7", "k0"], pid, ["x"])["x"][:, 0].tolist() == [7, 0]


def test_a_read_that_races_compaction_reads_the_rows_it_resolved(pid):
    # Readers copy outside the lock from the tensor they resolved under it; compaction replaces the
    # tensor rather than editing it, so rows never shift under a reader.
    client = MemoryDataPlaneClient()
    keys = [f"k{i}" for i in range(64)]
    client.put_samples(keys, pid, {"x": torch.arange(64)})
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(200):
                assert client.get_samples(["k62", "k63"], pid, ["x"])["x"].tolist() == [62, 63]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for key in keys[:62]:
        client.pop([key], pid)
    reader.join(timeout=60)
    assert not reader.is_alive() and errors == []
    assert client.retained_nbytes() == 2 * 8
    client.close()


def test_ragged_rows_free_one_by_one(client, pid):
    rows = [torch.zeros(MIB // 4 + i) for i in range(4)]  # ragged: stored per row
    client.put_samples(["a", "b", "c", "d"], pid, {"x": rows})
    full = client.retained_nbytes()
    client.pop(["a", "b", "c"], pid)
    assert client.retained_nbytes() == 4 * (MIB // 4 + 3) < full / 3


@pytest.mark.parametrize(
    "tags",
    [
        {},
        {"group_id": "g", "seq_len": 7},
        {"a b": 1, "'": 2, "}": 3, "r": 4, "n0": 5},  # names that would break generated source
        {f"t{i}": i for i in range(300)},
    ],
    ids=["none", "plain", "awkward-names", "300-tags"],
)
def test_tags_come_back_whole_through_every_read_path(client, pid, tags):
    client.register_partition(pid, ["x"], num_samples=None, consumer_tasks=["t"])
    client.put_samples(["a", "b"], pid, {"x": torch.zeros(2)}, tags=[tags, {**tags, "extra": None}])
    claimed = client.claim_meta(pid, "t", ["x"], 2)
    assert claimed.tags == [tags, {**tags, "extra": None}]
    assert client.list_keys(pid)[pid] == {"a": tags, "b": {**tags, "extra": None}}
    claimed.tags[0]["mutated"] = True  # a caller's edit never reaches the store
    assert client.list_keys(pid)[pid]["a"] == tags


def _read_x(client, pid, key):
    return client.get_samples([key], pid, ["x"])["x"]


@pytest.fixture
def big_rows(client, pid):
    """Keys "a" and "b", one 2 MiB row each, of 1.0 and 2.0 (their reads use the reused buffers)."""
    rows = torch.stack([torch.full((MIB // 2,), 1.0), torch.full((MIB // 2,), 2.0)])
    client.put_samples(["a", "b"], pid, {"x": rows})
    return client


@pytest.mark.parametrize(
    ("keep", "value"),
    [
        (lambda x: x, lambda kept: kept[0, 0].item()),
        (lambda x: x[0, :8], lambda kept: kept[0].item()),  # a view
        (lambda x: x.numpy(), lambda kept: float(kept[0, 0])),
        (lambda x: x.untyped_storage(), lambda kept: torch.empty(0).set_(kept)[0].item()),
        (lambda x: {"held": x}, lambda kept: kept["held"][0, 0].item()),
    ],
    ids=["tensor", "view", "numpy", "storage", "container"],
)
def test_a_read_never_lands_in_memory_a_caller_still_holds(big_rows, pid, keep, value):
    first = _read_x(big_rows, pid, "a")
    ptr, kept = first.data_ptr(), keep(first)
    del first
    second = _read_x(big_rows, pid, "b")
    assert second.data_ptr() != ptr
    assert value(kept) == 1.0 and second[0, 0].item() == 2.0


def test_a_dropped_read_buffer_is_reused_and_overwritten_whole(big_rows, pid):
    first = _read_x(big_rows, pid, "a")
    ptr = first.data_ptr()
    del first
    second = _read_x(big_rows, pid, "b")
    assert second.data_ptr() == ptr  # no new pages to fault in
    assert bool((second == 2.0).all())


def test_a_buffer_moved_to_shared_memory_is_never_reused(big_rows, pid):
    first = _read_x(big_rows, pid, "a")
    first.share_memory_()
    ptr = first.data_ptr()
    del first
    assert _read_x(big_rows, pid, "b").data_ptr() != ptr


def test_small_outputs_and_a_torch_without_use_counts_bypass_the_pool(monkeypatch):
    from kvplane.adapters import _read_buffers

    pool = _read_buffers.ReadBuffers()
    pool.take((4,), torch.float32)
    assert pool._buffers == []
    monkeypatch.setattr(_read_buffers, "_use_count", None)
    plain = _read_buffers.ReadBuffers(min_bytes=0)
    plain.take((4,), torch.float32)
    assert plain._buffers == []


def test_free_buffers_kept_are_bounded():
    from kvplane.adapters._read_buffers import ReadBuffers

    pool = ReadBuffers(min_bytes=0, max_free_bytes=3 * 1024)
    for size in (256, 512, 768, 1024):  # 1, 2, 3 and 4 KiB of float32, each dropped at once
        pool.take((size,), torch.float32)
    *older, newest = pool._buffers
    assert newest.numel() == 1024  # the one handed out last stays
    assert sum(b.numel() * b.element_size() for b in older) <= 3 * 1024


def test_rows_from_several_puts_are_stacked_into_reused_buffers(client, pid):
    for key, value in (("a", 1.0), ("b", 2.0)):  # one put each: the read stacks rows of two chunks
        client.put_samples([key], pid, {"x": torch.full((1, MIB // 2), value)})
    first = client.get_samples(["b", "a"], pid, ["x"])["x"]
    assert first[:, 0].tolist() == [2.0, 1.0]
    ptr = first.data_ptr()
    del first
    second = client.get_samples(["a", "b"], pid, ["x"])["x"]
    assert second.data_ptr() == ptr and second[:, 0].tolist() == [1.0, 2.0]
