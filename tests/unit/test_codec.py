"""The jagged codec helpers against NeMo-RL's documented behaviour (``nemo_rl.data_plane.codec``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import NonTensorStack, TensorDict

import kvplane
from kvplane import (
    DataPlaneBadRequest,
    codec,
    materialize,
    pack_jagged_fields,
    pack_per_token_field,
    response_from_nested,
    to_nested_by_length,
)

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.int32, torch.int64, torch.bool]


def padded_rows(rows: list[list[int]], pad: int = 0, dtype=torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.full((len(rows), max(map(len, rows))), pad, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out, torch.tensor([len(r) for r in rows])


def rows_of(nested: torch.Tensor) -> list[list]:
    return [row.tolist() for row in nested.unbind()]


def random_batch(n: int, s: int, dtype: torch.dtype, *, trailing=(), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, s + 1, (n,), generator=g)
    lengths[0] = s  # one full row, so max(lengths) == S
    data = (torch.randn((n, s, *trailing), generator=g) * 10).to(dtype)
    return data, lengths


# ── exports ───────────────────────────────────────────────────────────


def test_helpers_are_exported_from_kvplane():
    for name in ("materialize", "to_nested_by_length", "pack_jagged_fields", "pack_per_token_field",
                 "response_from_nested"):
        assert getattr(kvplane, name) is getattr(codec, name)
        assert name in kvplane.__all__


# ── to_nested_by_length ───────────────────────────────────────────────


def test_to_nested_by_length_strips_the_right_padding():
    padded, lengths = padded_rows([[1, 2, 3], [4, 5], [6, 7, 8, 9]])
    nested = to_nested_by_length(padded, lengths)
    assert nested.is_nested and nested.layout == torch.jagged
    assert rows_of(nested) == [[1, 2, 3], [4, 5], [6, 7, 8, 9]]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_to_nested_by_length_preserves_dtype_and_values(dtype):
    data, lengths = random_batch(6, 9, dtype)
    nested = to_nested_by_length(data, lengths)
    assert nested.dtype == dtype
    for i, row in enumerate(nested.unbind()):
        assert torch.equal(row, data[i, : int(lengths[i])])


def test_to_nested_by_length_keeps_trailing_dims_and_zero_length_rows():
    data = torch.arange(2 * 4 * 3).view(2, 4, 3)
    nested = to_nested_by_length(data, torch.tensor([0, 3]))
    rows = nested.unbind()
    assert rows[0].shape == (0, 3) and torch.equal(rows[1], data[1, :3])


def test_to_nested_by_length_of_no_rows_is_an_empty_jagged_tensor():
    nested = to_nested_by_length(torch.zeros((0, 5, 2), dtype=torch.bfloat16), torch.zeros(0, dtype=torch.long))
    assert nested.is_nested and nested.size(0) == 0 and nested.dtype == torch.bfloat16
    assert materialize({"x": nested})["x"].shape == (0, 0, 2)


def test_to_nested_by_length_accepts_int32_lengths():
    padded, _ = padded_rows([[1, 2], [3]])
    assert rows_of(to_nested_by_length(padded, torch.tensor([2, 1], dtype=torch.int32))) == [[1, 2], [3]]


@pytest.mark.parametrize(
    ("padded", "lengths", "match"),
    [
        (torch.zeros(5), torch.tensor([5]), r"\(N, S"),
        (torch.zeros((3, 4)), torch.tensor([1, 2]), r"lengths shape \(2,\) != \(3,\)"),
        (torch.zeros((2, 4)), torch.tensor([[1, 2]]), r"lengths shape"),
        (torch.zeros((2, 4)), torch.tensor([1, 5]), r"lengths\[1\] = 5 is outside \[0, 4\]"),
        (torch.zeros((2, 4)), torch.tensor([-1, 2]), r"lengths\[0\] = -1"),
        (torch.zeros((2, 4)), torch.tensor([1.0, 2.0]), r"integer dtype"),
        (torch.zeros((2, 4)), [1, 2], r"1-D integer tensor"),
        ([[1, 2]], torch.tensor([1]), r"must be a torch.Tensor"),
    ],
)
def test_to_nested_by_length_rejects_bad_shapes(padded, lengths, match):
    with pytest.raises(DataPlaneBadRequest, match=match) as caught:
        to_nested_by_length(padded, lengths)
    assert isinstance(caught.value, ValueError)


# ── pack_per_token_field ──────────────────────────────────────────────


def test_pack_per_token_field_drops_sequence_parallel_padding():
    val = torch.arange(16, dtype=torch.float32).view(2, 8)  # S = 8 > max(lengths) = 5
    packed = pack_per_token_field(val, torch.tensor([3, 5]))
    assert packed.is_nested
    assert rows_of(packed) == [val[0, :3].tolist(), val[1, :5].tolist()]


@pytest.mark.parametrize(
    ("val", "lengths"),
    [
        (torch.arange(4.0), torch.tensor([2, 2])),  # 1-D: per-sample
        (torch.zeros((3, 8)), torch.tensor([2, 2])),  # batch dim does not match
        (torch.zeros((2, 3)), torch.tensor([2, 5])),  # shorter than max(lengths)
        (torch.zeros((2, 3)), torch.zeros(0, dtype=torch.long)),  # no rows
    ],
)
def test_pack_per_token_field_passes_other_shapes_through(val, lengths):
    out = pack_per_token_field(val.requires_grad_(), lengths)
    assert not out.is_nested and torch.equal(out, val.detach()) and not out.requires_grad


def test_pack_per_token_field_rejects_bad_lengths():
    with pytest.raises(DataPlaneBadRequest, match="1-D"):
        pack_per_token_field(torch.zeros((2, 3)), torch.tensor([[1, 2]]))
    with pytest.raises(DataPlaneBadRequest, match="outside"):
        pack_per_token_field(torch.zeros((2, 3)), torch.tensor([-1, 2]))
    with pytest.raises(DataPlaneBadRequest, match="torch.Tensor"):
        pack_per_token_field([[1, 2]], torch.tensor([2]))


# ── pack_jagged_fields ────────────────────────────────────────────────


@pytest.mark.parametrize("keyword", ["token_aligned_fields", "force_jagged_fields"])  # NeMo-RL uses both
def test_pack_jagged_fields_jaggedizes_only_the_named_per_token_fields(keyword):
    lengths = torch.tensor([3, 5])
    advantages = torch.arange(16, dtype=torch.float32).view(2, 8)
    extra = torch.arange(16, dtype=torch.float32).view(2, 8)
    td = pack_jagged_fields({"advantages": advantages, "extra_2d": extra}, lengths=lengths,
                            **{keyword: frozenset({"advantages"})})
    assert isinstance(td, TensorDict) and td.batch_size == torch.Size([2])
    out = materialize(td, layout="padded")
    assert out["advantages"].shape == (2, 5)
    assert torch.equal(out["advantages"][0, :3], advantages[0, :3])
    assert torch.equal(out["advantages"][1], advantages[1, :5])
    assert torch.equal(out["advantages"][0, 3:], torch.zeros(2))
    assert torch.equal(out["extra_2d"], extra)


def test_pack_jagged_fields_without_lengths_packs_nothing_and_counts_rows():
    td = pack_jagged_fields({"a": torch.zeros((3, 4)), "b": torch.ones(3)}, lengths=None,
                            token_aligned_fields={"a"})
    assert td.batch_size == torch.Size([3]) and not td["a"].is_nested
    assert pack_jagged_fields({}, lengths=None).batch_size == torch.Size([0])


def test_pack_jagged_fields_uses_per_field_lengths():
    ids = torch.arange(12).view(2, 6)
    edges = torch.arange(8).view(2, 4)
    td = pack_jagged_fields({"ids": ids, "edges": edges}, lengths=torch.tensor([6, 2]),
                            token_aligned_fields={"ids"}, lengths_by_field={"edges": torch.tensor([1, 4])})
    assert rows_of(td["ids"]) == [ids[0].tolist(), ids[1, :2].tolist()]
    assert rows_of(td["edges"]) == [edges[0, :1].tolist(), edges[1].tolist()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pack_jagged_fields_round_trips_a_3d_per_token_payload(dtype):
    hidden = torch.randn(2, 8, 4).to(dtype)
    td = pack_jagged_fields({"h": hidden}, lengths=torch.tensor([3, 5]), token_aligned_fields={"h"})
    out = materialize(td)["h"]
    assert out.shape == (2, 5, 4) and out.dtype == dtype
    assert torch.equal(out[0, :3], hidden[0, :3]) and torch.equal(out[1], hidden[1, :5])
    assert torch.equal(out[0, 3:], torch.zeros(2, 4, dtype=dtype))


def test_pack_jagged_fields_carries_object_columns_one_element_per_row():
    objs = np.empty(3, dtype=object)
    objs[:] = [{"turn": 1}, "text", [1, 2]]
    td = pack_jagged_fields({"msg": objs, "x": torch.zeros(3)}, lengths=torch.tensor([1, 1, 1]))
    assert isinstance(td.get("msg"), NonTensorStack)
    assert td[2].get("msg").data == [1, 2]  # row 2 holds its own element, not the whole column
    out = materialize(td)["msg"]
    assert out.dtype == object and list(out) == [{"turn": 1}, "text", [1, 2]]
    empty = pack_jagged_fields({"msg": np.empty(0, dtype=object)}, lengths=torch.zeros(0, dtype=torch.long))
    assert empty.batch_size == torch.Size([0]) and materialize(empty)["msg"].shape == (0,)


def test_pack_jagged_fields_round_trips_through_the_memory_backend():
    client = kvplane.build_data_plane_client({"impl": "memory"})
    try:
        ids, lengths = padded_rows([[5, 6, 7], [8], [9, 10]])
        objs = np.array(["a", "b", "c"], dtype=object)
        lp = torch.randn(3, 4).to(torch.bfloat16)
        td = pack_jagged_fields({"input_ids": ids, "lp": lp, "o": objs}, lengths=lengths,
                                token_aligned_fields={"input_ids", "lp"})
        client.put_samples(["k0", "k1", "k2"], "p", td)
        got = materialize(client.get_samples(["k2", "k0"], "p", None), pad_value_dict={"input_ids": -1})
        assert got["input_ids"].tolist() == [[9, 10, -1], [5, 6, 7]]
        assert got["lp"].dtype == torch.bfloat16 and torch.equal(got["lp"][1, :3], lp[0, :3])
        assert list(got["o"]) == ["c", "a"]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("fields", "lengths", "match"),
    [
        ({"x": [1, 2]}, torch.tensor([1, 1]), r"unsupported value type for 'x': list"),
        ({"x": np.zeros(2)}, torch.tensor([1, 1]), r"unsupported value type"),
        ({"x": torch.zeros(3)}, torch.tensor([1, 1]), r"'x' has 3 rows, expected 2"),
        ({"x": torch.zeros(2), "y": torch.zeros(3)}, None, r"'y' has 3 rows, expected 2"),
        ([("x", torch.zeros(2))], None, r"mapping"),
    ],
)
def test_pack_jagged_fields_rejects_bad_columns(fields, lengths, match):
    with pytest.raises(DataPlaneBadRequest, match=match):
        pack_jagged_fields(fields, lengths=lengths)


# ── materialize ───────────────────────────────────────────────────────


def test_materialize_pads_each_field_with_its_own_pad_value():
    ids, lengths = padded_rows([[10, 20, 30], [40, 50], [60, 70, 80, 90]])
    mask, _ = padded_rows([[1, 1, 1], [1, 1], [1, 1, 1, 1]])
    td = TensorDict({"input_ids": to_nested_by_length(ids, lengths), "token_mask": to_nested_by_length(mask, lengths)},
                    batch_size=[3])
    out = materialize(td, layout="padded", pad_value_dict={"input_ids": 999, "token_mask": 0})
    assert isinstance(out, dict)
    assert out["input_ids"].tolist() == [[10, 20, 30, 999], [40, 50, 999, 999], [60, 70, 80, 90]]
    assert out["token_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_materialize_default_pad_value_is_zero_and_float_pads_work():
    nested = to_nested_by_length(*padded_rows([[1, 2, 3], [4]], pad=7))
    assert materialize({"x": nested})["x"].tolist() == [[1, 2, 3], [4, 0, 0]]
    floats = to_nested_by_length(torch.ones(2, 3, dtype=torch.bfloat16), torch.tensor([3, 1]))
    out = materialize({"f": floats}, pad_value_dict={"f": -1.5})["f"]
    assert out.dtype == torch.bfloat16 and out[1].tolist() == [1.0, -1.5, -1.5]


def test_materialize_passes_rectangular_tensors_through_unchanged():
    rect = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = materialize(TensorDict({"sample_mask": rect}, batch_size=[2]))
    assert out["sample_mask"] is rect


def test_materialize_jagged_layout_passes_nested_through():
    nested = to_nested_by_length(*padded_rows([[1, 2], [3, 4, 5]]))
    out = materialize(TensorDict({"x": nested}, batch_size=[2]), layout="jagged", pad_to_seqlen=8)
    assert out["x"].is_nested and rows_of(out["x"]) == [[1, 2], [3, 4, 5]]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("trailing", [(), (3,)], ids=["2d", "3d"])
def test_pack_then_materialize_restores_the_padded_batch(dtype, trailing):
    data, lengths = random_batch(7, 6, dtype, trailing=trailing, seed=3)
    pad = 0 if dtype == torch.bool else 5
    for i, length in enumerate(lengths.tolist()):
        data[i, length:] = pad
    td = pack_jagged_fields({"f": data}, lengths=lengths, token_aligned_fields={"f"})
    out = materialize(td, pad_value_dict={"f": pad})["f"]
    assert out.dtype == dtype and torch.equal(out, data)


def test_pad_to_seqlen_gives_every_dp_rank_one_shared_length():
    """Each rank's natural max differs; the driver's shared target makes all ranks agree."""
    rank_batches = [padded_rows([[1, 2], [3]]), padded_rows([[4, 5, 6, 7, 8]]), padded_rows([[9]])]
    target = max(int(lengths.max()) for _, lengths in rank_batches) + 1  # e.g. rounded up
    shapes = []
    for ids, lengths in rank_batches:
        td = pack_jagged_fields({"input_ids": ids, "mask": ids.clone().bool(), "reward": torch.zeros(len(ids))},
                                lengths=lengths, token_aligned_fields={"input_ids", "mask"})
        out = materialize(td, pad_value_dict={"input_ids": -1}, pad_to_seqlen=target)
        shapes.append((out["input_ids"].shape[1], out["mask"].shape[1]))
        assert out["input_ids"][0, int(lengths[0]):].eq(-1).all() and out["mask"].dtype == torch.bool
        assert out["reward"].shape == (len(ids),)  # 1-D fields are not sequences
    assert shapes == [(target, target)] * 3


def test_pad_to_seqlen_accepts_numpy_and_torch_integers():
    for target in (np.int64(4), torch.tensor(4)):
        assert materialize({"r": torch.ones(1, 2)}, pad_to_seqlen=target)["r"].shape == (1, 4)


def test_pad_to_seqlen_pads_rectangular_fields_and_never_truncates():
    rect = torch.ones(2, 3, dtype=torch.int32)
    wide = torch.ones(2, 9)
    out = materialize({"r": rect, "w": wide}, pad_value_dict={"r": 4}, pad_to_seqlen=5)
    assert out["r"].tolist() == [[1, 1, 1, 4, 4]] * 2 and out["r"].dtype == torch.int32
    assert out["w"] is wide


def test_pad_to_seqlen_pads_only_the_sequence_dim_of_3d_payloads():
    payload = torch.randn(2, 4, 3)
    td = pack_jagged_fields({"synthetic_3d_field": payload}, lengths=torch.tensor([2, 4]),
                            token_aligned_fields={"synthetic_3d_field"})
    out = materialize(td, pad_to_seqlen=6)["synthetic_3d_field"]
    assert out.shape == (2, 6, 3)
    assert torch.equal(out[0, :2], payload[0, :2]) and torch.equal(out[1, :4], payload[1, :4])
    assert torch.equal(out[0, 2:], torch.zeros(4, 3))


@pytest.mark.parametrize("field", ["teacher_full_logits", "teacher_full_hidden_states", "pixel_values"])
def test_pad_to_seqlen_skips_fields_whose_dim_1_is_not_tokens(field):
    payload = torch.randn(2, 4, 3)
    td = pack_jagged_fields({field: payload}, lengths=torch.tensor([2, 4]), token_aligned_fields={field})
    out = materialize(td, layout="padded", pad_to_seqlen=6)[field]
    assert out.shape == (2, 4, 3)
    assert torch.equal(out[0, 2:], torch.zeros(2, 3)) and torch.equal(out[1], payload[1])


def test_materialize_turns_non_tensor_columns_into_object_arrays():
    td = pack_jagged_fields({"x": torch.zeros(2), "o": np.array([{"a": 1}, None], dtype=object)}, lengths=None)
    out = materialize(td)
    assert out["o"].dtype == object and list(out["o"]) == [{"a": 1}, None]
    assert list(materialize({"o": ["p", "q"]})["o"]) == ["p", "q"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layout": "ragged"}, r"layout must be 'padded' or 'jagged'"),
        ({"pad_to_seqlen": -1}, r"pad_to_seqlen must be an integer >= 0"),
        ({"pad_to_seqlen": 2.5}, r"pad_to_seqlen"),
        ({"pad_to_seqlen": True}, r"pad_to_seqlen"),
    ],
)
def test_materialize_rejects_bad_arguments(kwargs, match):
    with pytest.raises(DataPlaneBadRequest, match=match):
        materialize({"x": torch.zeros(2, 2)}, **kwargs)


def test_materialize_rejects_bad_leaves():
    with pytest.raises(DataPlaneBadRequest, match="unexpected leaf type for 'x'"):
        materialize({"x": 3})
    with pytest.raises(DataPlaneBadRequest, match="TensorDict or a mapping"):
        materialize([torch.zeros(2)])


# ── response_from_nested ──────────────────────────────────────────────


def test_response_from_nested_takes_the_left_shifted_response_slice():
    full = torch.nested.as_nested_tensor(
        [torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), torch.tensor([1.1, 1.2, 1.3])], layout=torch.jagged
    )
    mask = torch.nested.as_nested_tensor([torch.ones(3), torch.ones(2)], layout=torch.jagged)
    out = response_from_nested(full, mask)
    assert out.is_nested
    rows = out.unbind()
    assert torch.allclose(rows[0], torch.tensor([0.2, 0.3, 0.4]))
    assert torch.allclose(rows[1], torch.tensor([1.1, 1.2]))


def test_response_from_nested_keeps_dtype_trailing_dims_and_empty_responses():
    full = to_nested_by_length(torch.arange(2 * 5 * 2).view(2, 5, 2).to(torch.bfloat16), torch.tensor([5, 3]))
    mask = to_nested_by_length(torch.ones(2, 5), torch.tensor([2, 0]))
    rows = response_from_nested(full, mask).unbind()
    assert rows[0].dtype == torch.bfloat16 and rows[0].tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert rows[1].shape == (0, 2)


def test_response_from_nested_of_no_rows():
    empty = to_nested_by_length(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert response_from_nested(empty, empty).size(0) == 0


@pytest.mark.parametrize(
    ("full", "mask", "match"),
    [
        (torch.zeros(2, 3), to_nested_by_length(torch.ones(2, 3), torch.tensor([1, 1])), "full must be"),
        (to_nested_by_length(torch.ones(2, 3), torch.tensor([3, 3])), torch.ones(2, 1), "response_mask must be"),
        (
            to_nested_by_length(torch.ones(2, 3), torch.tensor([3, 3])),
            to_nested_by_length(torch.ones(1, 3), torch.tensor([1])),
            "full has 2 rows, response_mask 1",
        ),
        (
            to_nested_by_length(torch.ones(2, 3), torch.tensor([3, 2])),
            to_nested_by_length(torch.ones(2, 3), torch.tensor([1, 2])),
            "row 1 has 2 tokens, too few for a response of 2",
        ),
    ],
)
def test_response_from_nested_rejects_bad_shapes(full, mask, match):
    with pytest.raises(DataPlaneBadRequest, match=match):
        response_from_nested(full, mask)
