"""Every dtype and shape kind goes through TransferQueue and comes back as it went in (both backends)."""

from __future__ import annotations

import pytest
import torch
from tensordict import NonTensorStack, TensorDict

from kvplane._tensors import make_object_column
from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient

B = 6
KEYS = [f"k{i}" for i in range(B)]


def _columns() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "bf16_BL": torch.randn(B, 16, generator=g).to(torch.bfloat16),
        "f32_BL": torch.randn(B, 16, generator=g),
        "i64_BL": torch.randint(0, 50_000, (B, 16), generator=g),
        "bool_BL": torch.rand(B, 16, generator=g) > 0.5,
        "f32_B": torch.randn(B, generator=g),
        "i64_B": torch.arange(B) * 7,
        "bool_B": torch.tensor([True, False] * (B // 2)),
        "i64_B1": torch.arange(B).view(B, 1),
        "f32_BLD": torch.randn(B, 5, 3, generator=g),
        "bf16_BLD": torch.randn(B, 4, 2, generator=g).to(torch.bfloat16),
        "ragged": torch.nested.nested_tensor(
            [torch.arange(n, dtype=torch.int64) for n in (3, 1, 4, 1, 5, 9)], layout=torch.jagged
        ),
        "ragged_2d": torch.nested.nested_tensor(
            [torch.randn(n, 8, generator=g) for n in (2, 7, 1, 8, 2, 8)], layout=torch.jagged
        ),
        "strings": make_object_column([f"text-{i}" * (i + 1) for i in range(B)]),
        "dicts": make_object_column(
            [{"role": "user", "turn": i, "tokens": list(range(i))} for i in range(B)]
        ),
    }


def _rows(value) -> list:
    if isinstance(value, torch.Tensor):
        return [r.tolist() for r in (value.unbind() if value.is_nested else value)]
    return value.tolist()


def test_every_kind_round_trips_in_one_batch_in_the_requested_order(
    client: TransferQueueDataPlaneClient, pid: str
):
    columns = _columns()
    client.put_samples(KEYS, pid, TensorDict(columns, batch_size=[B]))
    order = [3, 0, 5, 1, 4, 2]
    out = client.get_samples([KEYS[i] for i in order], pid, None)
    assert sorted(out.keys()) == sorted(columns)
    for name, written in columns.items():
        got = out.get(name)
        if isinstance(written, NonTensorStack):
            assert isinstance(got, NonTensorStack), name
            assert got.tolist() == [written.tolist()[i] for i in order], name
        elif written.is_nested:
            assert got.is_nested and got.layout is torch.jagged, name
            assert got.dtype == written.dtype, name
            assert _rows(got) == [_rows(written)[i] for i in order], name
        else:
            assert not got.is_nested, name
            assert got.dtype == written.dtype and got.shape == written.shape, (name, got.shape)
            assert torch.equal(got, written[order]), name


@pytest.mark.parametrize("name", ["f32_B", "i64_B1", "bf16_BLD", "ragged"])
def test_each_kind_alone_and_for_a_single_key(client: TransferQueueDataPlaneClient, pid: str, name: str):
    written = _columns()[name]
    client.put_samples(KEYS, pid, {name: written})
    one = client.get_samples(["k4"], pid, [name])[name]
    if written.is_nested:  # one ragged row is trivially uniform: it comes back dense, like a stack
        assert not one.is_nested and one.tolist() == [_rows(written)[4]]
    else:
        assert one.shape == (1, *written.shape[1:]) and torch.equal(one[0], written[4])


def test_uniform_jagged_input_comes_back_dense(client: TransferQueueDataPlaneClient, pid: str):
    rows = [torch.full((4,), float(i)) for i in range(B)]
    client.put_samples(KEYS, pid, {"x": torch.nested.nested_tensor(rows, layout=torch.jagged)})
    out = client.get_samples(KEYS, pid, ["x"])["x"]
    assert not out.is_nested and torch.equal(out, torch.stack(rows))


def test_upserted_rows_of_another_length_read_back_jagged(client: TransferQueueDataPlaneClient, pid: str):
    client.put_samples(KEYS, pid, {"ids": torch.zeros(B, 4, dtype=torch.int64)})
    client.put_samples(["k1"], pid, {"ids": torch.ones(1, 6, dtype=torch.int64)})
    out = client.get_samples(["k0", "k1"], pid, ["ids"])["ids"]
    assert out.is_nested and _rows(out) == [[0] * 4, [1] * 6]
    assert client.get_samples(["k0", "k2"], pid, ["ids"])["ids"].shape == (2, 4)  # those two are uniform


def test_a_grpo_sized_batch_round_trips_exactly(client: TransferQueueDataPlaneClient, pid: str):
    n, length = 512, 4096
    g = torch.Generator().manual_seed(1)
    batch = TensorDict(
        input_ids=torch.randint(0, 150_000, (n, length), generator=g),
        logprobs=torch.randn(n, length, generator=g),
        advantages=torch.randn(n, generator=g),
        batch_size=[n],
    )
    keys = [f"s{i}" for i in range(n)]
    client.put_samples(keys, pid, batch, tags=[{"group_id": i // 8, "weight_version": 3} for i in range(n)])
    out = client.get_samples(keys, pid, ["input_ids", "logprobs", "advantages"])
    for name in ("input_ids", "logprobs", "advantages"):
        assert not out[name].is_nested and out[name].is_contiguous()
        assert torch.equal(out[name], batch[name]), name


def test_zero_byte_rows_round_trip(client: TransferQueueDataPlaneClient, pid: str):
    # MooncakeStore refuses zero-byte objects; kvplane rebuilds such rows from their recorded shape.
    rows = [torch.arange(3.0), torch.empty(0), torch.arange(2.0)]
    client.put_samples(["a", "b", "c"], pid, {"r": torch.nested.nested_tensor(rows, layout=torch.jagged)})
    client.put_samples(["a", "b", "c"], pid, {"none": torch.empty(3, 0, dtype=torch.int32)})
    out = client.get_samples(["b", "c", "a"], pid, ["r", "none"])
    assert _rows(out["r"]) == [[], [0.0, 1.0], [0.0, 1.0, 2.0]]
    assert out["none"].shape == (3, 0) and out["none"].dtype == torch.int32
