"""Bad input is rejected with a typed error, and a rejected call leaves the store exactly as it was.

Written once for every backend, like test_contract.py: only the ``client`` and ``pid`` fixtures are
used (tests/e2e may re-import this module with TransferQueue clients), ``client`` is never closed, and
each property test works in its own small partitions and clears them afterwards.

Decisions pinned here (where DESIGN.md is silent):

- Zero-size tensors: a ``[B, 0]`` (or ``[B, 0, D]``) column is legal and comes back dense with that
  shape and dtype; a ragged column may hold empty rows; a ``[0]`` column is legal only with zero keys
  (an empty write stores nothing and creates no partition); with ``B > 0`` keys it is a row-count
  error.
- Float payloads are stored bit for bit: every NaN (sign and payload bits kept), both infinities,
  ``-0.0`` and subnormals, in float16, bfloat16, float32 and float64.
- A string where a list of names is expected is an error, never a list of characters.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

import kvplane
from kvplane import (
    DataPlaneBadRequest,
    DataPlaneError,
    DataPlaneKeyError,
    DataPlaneNotReady,
    DataPlaneTimeout,
    KVBatchMeta,
    internal_partition,
)
from tests.snapshots import store_snapshot, value_picture

_PROPERTY = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_partition_numbers = itertools.count()

EXISTING = ["k0", "k1", "k2"]


def _seed(client, partition):
    client.put_samples(
        EXISTING,
        partition,
        {
            "x": torch.arange(6, dtype=torch.float32).view(3, 2),
            "y": torch.tensor([1, 2, 3]),
            "text": ["a", "b", "c"],
        },
        tags=[{"group_id": "g", "seq_len": 2}, {"group_id": "g", "seq_len": 2}, {"seq_len": 1}],
    )


def _fresh_pair(pid):
    n = next(_partition_numbers)
    return f"{pid}-{n}", f"{pid}-{n}-new"


def _assert_rejected_without_trace(client, pid, call):
    existing, fresh = _fresh_pair(pid)
    _seed(client, existing)
    before = store_snapshot(client, existing, fresh)
    try:
        with pytest.raises(DataPlaneBadRequest):
            call(client, existing, fresh)
        assert store_snapshot(client, existing, fresh) == before
    finally:
        client.clear_samples(None, existing)
        client.clear_samples(None, fresh)


# ---------------------------------------------------------------------- strategies

_KEY = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=6)
_NOT_A_KEY = st.one_of(
    st.integers(),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.binary(max_size=3),
    st.just(""),
    st.tuples(_KEY),
)
_NOT_A_KEY_LIST = st.one_of(
    _KEY,
    st.integers(),
    st.none(),
    st.frozensets(_KEY, max_size=3),
    st.dictionaries(_KEY, st.integers(), max_size=2),
    st.just(torch.tensor([1, 2])),
)
_NOT_A_DICT = st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2))
_NOT_A_NAME = st.one_of(st.integers(), st.none(), st.tuples(st.integers()), st.just(""))

_PUT_DEFECTS = [
    "duplicate-key",
    "non-string-key",
    "keys-not-a-list",
    "row-count",
    "list-column-rows",
    "nested-column-rows",
    "tag-count",
    "tag-not-a-dict",
    "tag-name",
    "tags-not-a-list",
    "fields-not-a-mapping",
    "column-type",
    "zero-dim-column",
    "nested-tensordict-column",
    "empty-fields",
    "field-name",
    "dtype-drift",
    "kind-drift",
    "partition",
]


def _columns(n):
    return {"x": torch.full((n, 2), 7.0), "y": torch.arange(n)}


@st.composite
def bad_puts(draw, defect):
    """(target, keys, fields, tags): a put_samples call with exactly the one ``defect``."""
    n = draw(st.integers(1, 4))
    keys = draw(st.lists(st.one_of(st.sampled_from(EXISTING), _KEY), min_size=n, max_size=n, unique=True))
    fields, tags = _columns(n), [{"t": i} for i in range(n)]
    target = (
        "existing" if defect in ("dtype-drift", "kind-drift") else draw(st.sampled_from(["existing", "new"]))
    )
    i = draw(st.integers(0, n - 1))
    if defect == "duplicate-key":
        keys, fields, tags = [*keys, keys[i]], _columns(n + 1), [*tags, {}]
    elif defect == "non-string-key":
        keys[i] = draw(_NOT_A_KEY)
    elif defect == "keys-not-a-list":
        keys = draw(_NOT_A_KEY_LIST)
    elif defect == "row-count":
        fields = {"x": torch.full((draw(st.integers(0, 6).filter(lambda m: m != n)), 2), 7.0)}
    elif defect == "list-column-rows":
        fields["y"] = list(range(n + draw(st.sampled_from([-1, 1]))))
    elif defect == "nested-column-rows":
        fields["x"] = torch.nested.nested_tensor(
            [torch.ones(j + 1) for j in range(n + 1)], layout=torch.jagged
        )
    elif defect == "tag-count":
        tags = tags[:-1] if draw(st.booleans()) else [*tags, {}]
    elif defect == "tag-not-a-dict":
        tags[i] = draw(_NOT_A_DICT)
    elif defect == "tag-name":
        tags[i] = {draw(_NOT_A_NAME.filter(lambda v: v != "")): 1}
    elif defect == "tags-not-a-list":
        tags = {"t": 1}
    elif defect == "fields-not-a-mapping":
        fields = draw(st.sampled_from([torch.ones(n), 3, "x", [1] * n]))
    elif defect == "column-type":
        fields["x"] = draw(st.sampled_from([3, 2.5, "s", None, b"raw"]))
    elif defect == "zero-dim-column":
        fields["x"] = torch.tensor(1.0)
    elif defect == "nested-tensordict-column":
        fields["x"] = TensorDict({"a": torch.ones(n)}, batch_size=[n])
    elif defect == "empty-fields":
        fields = {}
    elif defect == "field-name":
        fields = {draw(_NOT_A_NAME): torch.ones(n)}
    elif defect == "dtype-drift":
        fields["x"] = fields["x"].to(
            draw(st.sampled_from([torch.float64, torch.int64, torch.bfloat16, torch.bool]))
        )
    elif defect == "kind-drift":  # a tensor where objects are stored, or objects where a tensor is
        if draw(st.booleans()):
            fields["text"] = torch.zeros(n)
        else:
            fields["x"] = ["s"] * n
    elif defect == "partition":
        target = draw(st.sampled_from(["", None, 5, ("p",)]))
    return target, keys, fields, tags


# ---------------------------------------------------------------------- the core property


@pytest.mark.parametrize("defect", _PUT_DEFECTS)
@_PROPERTY
@given(data=st.data())
def test_a_rejected_put_leaves_the_store_exactly_as_it_was(client, pid, defect, data):
    target, keys, fields, tags = data.draw(bad_puts(defect))

    def call(c, existing, fresh):
        partition = (
            {"existing": existing, "new": fresh}.get(target, target) if isinstance(target, str) else target
        )
        c.put_samples(keys, partition, fields, tags=tags)

    _assert_rejected_without_trace(client, pid, call)


_BAD_OTHER_CALLS = {
    "get-keys-as-string": lambda c, p: c.get_samples("k0", p, ["x"]),
    "get-non-string-key": lambda c, p: c.get_samples(["k0", 1], p, ["x"]),
    "get-duplicate-keys": lambda c, p: c.get_samples(["k0", "k0"], p, ["x"]),
    "get-unknown-key": lambda c, p: c.get_samples(["k0", "nope"], p, ["x"]),
    "get-unknown-field": lambda c, p: c.get_samples(["k0"], p, ["x", "nope"]),
    "get-duplicate-fields": lambda c, p: c.get_samples(["k0"], p, ["x", "x"]),
    "get-fields-not-names": lambda c, p: c.get_samples(["k0"], p, [1]),
    "get-bad-partition": lambda c, p: c.get_samples(["k0"], None, ["x"]),
    "clear-keys-as-string": lambda c, p: c.clear_samples("k0", p),
    "clear-non-string-key": lambda c, p: c.clear_samples(["k0", 3], p),
    "clear-bad-partition": lambda c, p: c.clear_samples(["k0"], ""),
    "pop-keys-as-string": lambda c, p: c.pop("k0k1", p),
    "evict-keys-as-string": lambda c, p: c.evict("k0", p),
    "claim-zero-batch": lambda c, p: c.claim_meta(p, "t", ["x"], 0, blocking=False),
    "claim-bool-batch": lambda c, p: c.claim_meta(p, "t", ["x"], True, blocking=False),
    "claim-empty-task": lambda c, p: c.claim_meta(p, "", ["x"], 1, blocking=False),
    "claim-fields-as-string": lambda c, p: c.claim_meta(p, "t", "xy", 1, blocking=False),
    "register-negative-count": lambda c, p: c.register_partition(p, ["x"], -1, ["t"]),
    "register-float-count": lambda c, p: c.register_partition(p, ["x"], 2.0, ["t"]),
    "register-tasks-as-string": lambda c, p: c.register_partition(p, ["x"], 3, "train"),
    "register-fields-as-string": lambda c, p: c.register_partition(p, "xy", 3, ["t"]),
    "consumption-tasks-as-string": lambda c, p: c.check_consumption_status(p, "train"),
    "consumption-unknown-partition": lambda c, p: c.check_consumption_status(p + "-unknown", ["t"]),
    "list-bad-partition": lambda c, p: c.list_keys(5),
    "list-metadata-bad-partition": lambda c, p: c.list_metadata(""),
    "get-data-without-fields": lambda c, p: c.get_data(KVBatchMeta(p, None, ["k0"])),
}


@pytest.mark.parametrize("name", sorted(_BAD_OTHER_CALLS))
def test_rejected_reads_claims_and_clears_change_nothing(client, pid, name):
    _assert_rejected_without_trace(
        client, pid, lambda c, existing, fresh: _BAD_OTHER_CALLS[name](c, existing)
    )


#: The same bad input gets the same error type on every backend (the exact class, not a parent):
#: ``name -> (call(client, seeded_partition), error type)``. tests/e2e re-imports this table.
SAME_ERRORS = {
    "put-backend-records": (
        lambda c, p: c.put_samples(["k"], internal_partition("backend", p), {"x": torch.ones(1)}),
        DataPlaneBadRequest,
    ),
    "register-backend-records": (
        lambda c, p: c.register_partition(internal_partition("backend", p), ["x"], 1, ["t"]),
        DataPlaneBadRequest,
    ),
    "list-backend-records": (lambda c, p: c.list_keys(internal_partition("backend", p)), DataPlaneBadRequest),
    "put-dtype-drift": (lambda c, p: c.put_samples(["k0"], p, {"y": torch.ones(1)}), DataPlaneBadRequest),
    "put-nothing": (lambda c, p: c.put_samples(["k0"], p), DataPlaneBadRequest),
    "put-tags-not-a-list": (lambda c, p: c.put_samples(["k0"], p, None, tags={"t": 1}), DataPlaneBadRequest),
    "get-unknown-partition": (lambda c, p: c.get_samples(["k0"], p + "-unknown", ["x"]), DataPlaneKeyError),
    "get-unknown-key": (lambda c, p: c.get_samples(["k0", "nope"], p, ["x"]), DataPlaneKeyError),
    "get-unknown-field": (lambda c, p: c.get_samples(["k0"], p, ["nope"]), DataPlaneKeyError),
    "get-all-over-different-fields": (
        lambda c, p: (
            c.put_samples(["extra"], p, {"x": torch.ones(1, 2)}),
            c.get_samples(["k0", "extra"], p, None),
        ),
        DataPlaneBadRequest,
    ),
    "get-data-not-a-meta": (lambda c, p: c.get_data({"sample_ids": ["k0"]}), DataPlaneBadRequest),
    "get-data-without-fields": (lambda c, p: c.get_data(KVBatchMeta(p, None, ["k0"])), DataPlaneBadRequest),
    "claim-negative-dp-rank": (
        lambda c, p: c.claim_meta(p, "t", ["x"], 1, dp_rank=-1, blocking=False),
        DataPlaneBadRequest,
    ),
    "claim-blocking-not-a-bool": (
        lambda c, p: c.claim_meta(p, "t", ["x"], 1, blocking="no"),
        DataPlaneBadRequest,
    ),
    "claim-negative-timeout": (
        lambda c, p: c.claim_meta(p, "t", ["x"], 1, timeout_s=-1),
        DataPlaneBadRequest,
    ),
    "claim-unregistered-task": (
        lambda c, p: (c.register_partition(p, ["x"], 3, ["train"]), c.claim_meta(p, "t", ["x"], 1)),
        DataPlaneKeyError,
    ),
    "consumption-unknown-partition": (
        lambda c, p: c.check_consumption_status(p + "-unknown", ["t"]),
        DataPlaneKeyError,
    ),
    "clear-duplicate-keys": (lambda c, p: c.clear_samples(["k0", "k0"], p), DataPlaneBadRequest),
    "ping-negative-timeout": (lambda c, p: c.ping(timeout_s=-1), DataPlaneBadRequest),
    "ping-timeout-not-a-number": (lambda c, p: c.ping(timeout_s="1"), DataPlaneBadRequest),
    # issue 16: inputs that used to escape as raw OverflowError / ValueError / TypeError
    "claim-timeout-beyond-timeout-max": (
        lambda c, p: c.claim_meta(p, "t", ["x"], 1, timeout_s=1e10),
        DataPlaneBadRequest,
    ),
    "claim-timeout-huge-int": (
        lambda c, p: c.claim_meta(p, "t", ["x"], 1, timeout_s=10**400),
        DataPlaneBadRequest,
    ),
    "ping-timeout-beyond-timeout-max": (lambda c, p: c.ping(timeout_s=1e10), DataPlaneBadRequest),
    "claim-huge-batch-size": (
        lambda c, p: c.claim_meta(p, "t", ["x"], 10**30, blocking=False),
        DataPlaneBadRequest,
    ),
    "claim-huge-dp-rank": (
        lambda c, p: c.claim_meta(p, "t", ["x"], 1, dp_rank=10**30, blocking=False),
        DataPlaneBadRequest,
    ),
    "register-huge-num-samples": (
        lambda c, p: c.register_partition(p, ["x"], 10**30, ["t"]),
        DataPlaneBadRequest,
    ),
    "register-enums-not-lists": (
        lambda c, p: c.register_partition(p, ["x"], 3, ["t"], enums={"x": 5}),
        DataPlaneBadRequest,
    ),
    "register-enums-int-name": (
        lambda c, p: c.register_partition(p, ["x"], 3, ["t"], enums={1: ["a"]}),
        DataPlaneBadRequest,
    ),
    "put-sparse-column": (
        lambda c, p: c.put_samples(["n0", "n1"], p, {"s": torch.eye(2).to_sparse()}),
        DataPlaneBadRequest,
    ),
    "put-sparse-rows": (
        lambda c, p: c.put_samples(["n0", "n1"], p, {"s": [torch.ones(2).to_sparse()] * 2}),
        DataPlaneBadRequest,
    ),
    "put-meta-device-column": (
        lambda c, p: c.put_samples(["n0"], p, {"m": torch.empty(1, 2, device="meta")}),
        DataPlaneBadRequest,
    ),
    "put-meta-device-rows": (
        lambda c, p: c.put_samples(["n0", "n1"], p, {"m": [torch.empty(2, device="meta")] * 2}),
        DataPlaneBadRequest,
    ),
    "put-rows-on-mixed-devices": (
        lambda c, p: c.put_samples(["n0", "n1"], p, {"m": [torch.ones(2), torch.empty(2, device="meta")]}),
        DataPlaneBadRequest,
    ),
    "put-surrogate-key": (
        lambda c, p: c.put_samples(["bad\ud800"], p, None, [{"t": 1}]),
        DataPlaneBadRequest,
    ),
    "put-surrogate-partition": (
        lambda c, p: c.put_samples(["n0"], p + "\ud800", None, [{"t": 1}]),
        DataPlaneBadRequest,
    ),
    "put-surrogate-field": (
        lambda c, p: c.put_samples(["n0"], p, {"f\udfff": torch.ones(1)}),
        DataPlaneBadRequest,
    ),
    "put-surrogate-tag-name": (
        lambda c, p: c.put_samples(["k0"], p, None, [{"t\ud800": 1}]),
        DataPlaneBadRequest,
    ),
    "put-surrogate-tag-value": (
        lambda c, p: c.put_samples(["k0"], p, None, [{"t": "v\ud800"}]),
        DataPlaneBadRequest,
    ),
    "put-surrogate-nested-tag-value": (
        lambda c, p: c.put_samples(["k0"], p, None, [{"t": {"a": ["v\ud800"]}}]),
        DataPlaneBadRequest,
    ),
    "put-uncopyable-tag-value": (
        lambda c, p: c.put_samples(["k0"], p, None, [{"t": [threading.Lock()]}]),
        DataPlaneBadRequest,
    ),
    "claim-surrogate-task": (
        lambda c, p: c.claim_meta(p, "t\ud800", ["x"], 1, blocking=False),
        DataPlaneBadRequest,
    ),
    "get-surrogate-key": (lambda c, p: c.get_samples(["k\ud800"], p, ["x"]), DataPlaneBadRequest),
    "clear-surrogate-key": (lambda c, p: c.clear_samples(["k\ud800"], p), DataPlaneBadRequest),
    "register-surrogate-task": (
        lambda c, p: c.register_partition(p, ["x"], 3, ["t\ud800"]),
        DataPlaneBadRequest,
    ),
}


@pytest.mark.parametrize("name", sorted(SAME_ERRORS))
def test_the_same_bad_input_gets_the_same_error_type_on_every_backend(client, pid, name):
    call, expected = SAME_ERRORS[name]
    partition, _ = _fresh_pair(pid)
    _seed(client, partition)
    before = store_snapshot(client, partition)
    try:
        with pytest.raises(DataPlaneError) as caught:
            call(client, partition)
        assert type(caught.value) is expected, caught.value
        if name.startswith(("put-", "register-", "clear-")) and name != "get-all-over-different-fields":
            assert store_snapshot(client, partition) == before
    finally:
        client.clear_samples(None, partition)


@pytest.mark.parametrize("value", [threading.Lock(), (i for i in range(3))], ids=["lock", "generator"])
def test_an_object_value_that_cannot_be_copied_is_a_typed_error_and_stores_nothing(client, pid, value):
    partition, _ = _fresh_pair(pid)
    _seed(client, partition)
    before = store_snapshot(client, partition)
    try:
        with pytest.raises(DataPlaneError):  # memory: DataPlaneWriteError (tests/unit/test_memory_store.py)
            client.put_samples(["k0", "new"], partition, {"obj": [value, 1]})
        assert store_snapshot(client, partition) == before
    finally:
        client.clear_samples(None, partition)


def test_stored_tags_are_the_stores_own(client, pid):
    history = [1, 2]
    tags = {"history": history, "meta": {"a": {"b": [3]}}, "pair": [1, [2]]}  # TransferQueue: no tuples
    client.put_samples(["k"], pid, None, tags=[tags])
    history.append("writer's later edit")
    tags["meta"]["a"]["b"].append(4)
    listed = client.list_keys(pid)[pid]["k"]
    assert listed == {"history": [1, 2], "meta": {"a": {"b": [3]}}, "pair": [1, [2]]}
    listed["history"].append("edit of a listing")
    listed["pair"][1].append("edit of a listing")
    client.register_partition(pid, ["x"], None, [])
    client.put_samples(["k"], pid, {"x": torch.ones(1)})
    claimed = client.claim_meta(pid, "t", ["x"], 1, timeout_s=10)
    claimed.tags[0]["meta"]["a"]["b"].append("edit of a claimed meta")
    written = client.put_samples(["k"], pid, None, tags=[{"more": 1}])
    written.tags[0]["history"].append("edit of a put's meta")
    assert client.list_keys(pid)[pid]["k"] == {
        **tags,
        "history": [1, 2],
        "meta": {"a": {"b": [3]}},
        "more": 1,
    }
    client.clear_samples(None, pid)


def test_a_claim_on_a_partition_never_registered_says_so_and_how_to_fix_it(client, pid):
    with pytest.raises(DataPlaneTimeout, match=r"never registered.*register_partition\(.*num_samples"):
        client.claim_meta(pid, "train", ["x"], 2, timeout_s=0.05)


def test_a_claim_on_a_partition_without_num_samples_says_so_and_how_to_fix_it(client, pid):
    client.register_partition(pid, ["x"], None, ["train"])
    client.put_samples(["k0"], pid, {"x": torch.ones(1)})
    with pytest.raises(DataPlaneTimeout, match=r"without num_samples.*full batches of 2.*num_samples=N"):
        client.claim_meta(pid, "train", ["x"], 2, timeout_s=0.05)
    client.clear_samples(None, pid)


def test_a_rejected_registration_keeps_the_previous_one(client, pid):
    client.register_partition(pid, ["x"], num_samples=1, consumer_tasks=["train"])
    client.put_samples(["a"], pid, {"x": torch.ones(1)})
    with pytest.raises(DataPlaneBadRequest):
        client.register_partition(pid, ["x"], num_samples=-5, consumer_tasks=["other"])
    with pytest.raises(DataPlaneKeyError, match="other"):
        client.claim_meta(pid, "other", ["x"], 1, blocking=False)
    assert client.claim_meta(pid, "train", ["x"], 1, blocking=False).sample_ids == ["a"]


def test_reads_of_unknown_partitions_and_fields_raise_and_create_nothing(client, pid):
    with pytest.raises(DataPlaneKeyError, match=pid):
        client.get_samples(["a"], pid, ["x"])
    assert client.claim_meta(pid, "t", ["x"], 1, blocking=False).sample_ids == []
    assert (
        client.list_keys(pid) == {} and client.list_metadata(pid) == [] and client.list_sample_ids(pid) == []
    )
    client.clear_samples(["a"], pid)
    client.put_samples(["a"], pid, {"x": torch.ones(1)})
    with pytest.raises(DataPlaneKeyError, match="nope"):
        client.get_samples(["a"], pid, ["nope"])
    assert list(client.list_keys(pid)[pid]) == ["a"]


@pytest.mark.parametrize("lengths", [(2, 2), (2, 3)], ids=["uniform", "ragged"])
def test_rows_of_different_dtypes_in_one_column_are_rejected(client, pid, lengths):
    rows = [torch.ones(lengths[0]), torch.full((lengths[1],), 2**40, dtype=torch.int64)]
    with pytest.raises(DataPlaneBadRequest):
        client.put_samples(["a", "b"], pid, {"x": rows})
    assert client.list_keys(pid) == {}


@pytest.mark.parametrize("timeout_s", [None, "abc", math.inf, math.nan])
def test_claim_deadlines_must_be_finite_numbers(client, pid, timeout_s):
    client.put_samples(["a"], pid, {"x": torch.ones(1)})
    with pytest.raises(DataPlaneBadRequest):
        client.claim_meta(pid, "t", ["x"], 2, timeout_s=timeout_s)


# ---------------------------------------------------------------------- legal edge cases round-trip


@pytest.mark.parametrize("shape", [(3, 0), (3, 0, 4), (3, 2, 0)], ids=["B0", "B0D", "BL0"])
def test_zero_size_columns_round_trip_dense(client, pid, shape):
    column = torch.empty(shape, dtype=torch.int32)
    client.put_samples(["a", "b", "c"], pid, {"z": column, "n": torch.arange(3)})
    out = client.get_samples(["c", "a"], pid, ["z", "n"])
    assert not out["z"].is_nested and out["z"].dtype == torch.int32
    assert tuple(out["z"].shape) == (2, *shape[1:])
    assert out["n"].tolist() == [2, 0]
    client.put_samples(["d"], pid, {"z": torch.empty((1, *shape[1:]), dtype=torch.int32)})
    assert tuple(client.get_samples(["a", "d"], pid, ["z"])["z"].shape) == (2, *shape[1:])


def test_ragged_columns_may_hold_empty_rows(client, pid):
    rows = [torch.arange(2.0), torch.empty(0), torch.arange(3.0)]
    client.put_samples(["a", "b", "c"], pid, {"r": rows})
    out = client.get_samples(["b", "c", "a"], pid, ["r"])["r"]
    assert out.is_nested
    assert [row.tolist() for row in out.unbind()] == [[], [0.0, 1.0, 2.0], [0.0, 1.0]]


def test_a_zero_row_column_is_legal_only_with_zero_keys(client, pid):
    assert client.put_samples([], pid, {"x": torch.zeros(0)}).sample_ids == []
    assert client.list_keys(pid) == {}
    with pytest.raises(DataPlaneBadRequest, match="x"):
        client.put_samples(["a"], pid, {"x": torch.zeros(0)})
    assert client.list_keys(pid) == {}


def test_a_64_mib_tensor_round_trips(client, pid):
    big = torch.arange(16 * 2**20, dtype=torch.float32).view(1, -1)  # 64 MiB, exact integers in float32
    client.put_samples(["big"], pid, {"big": big})
    out = client.get_samples(["big"], pid, ["big"])["big"]
    assert out.shape == big.shape and out.dtype == big.dtype
    assert torch.equal(out, big)
    client.clear_samples(["big"], pid)


_FLOAT_KINDS = {
    torch.float16: (torch.int16, 16),
    torch.bfloat16: (torch.int16, 16),
    torch.float32: (torch.int32, 32),
    torch.float64: (torch.int64, 64),
}


@st.composite
def float_columns(draw):
    """Any bit patterns of a float dtype, NaNs with payloads and infinities always included."""
    dtype = draw(st.sampled_from(list(_FLOAT_KINDS)))
    int_dtype, bits = _FLOAT_KINDS[dtype]
    specials = (
        torch.tensor([math.nan, -math.nan, math.inf, -math.inf, -0.0], dtype=dtype).view(int_dtype).tolist()
    )
    quiet_nan_with_payload = (specials[0] | 1) if specials[0] > 0 else specials[0]
    patterns = draw(st.lists(st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1), max_size=6))
    values = torch.tensor([*specials, quiet_nan_with_payload, *patterns], dtype=int_dtype).view(dtype)
    return values.view(-1, 1) if draw(st.booleans()) else values


@_PROPERTY
@given(column=float_columns())
def test_float_payloads_are_stored_bit_for_bit(client, pid, column):
    partition, _ = _fresh_pair(pid)
    keys = [f"f{i}" for i in range(column.shape[0])]
    try:
        client.put_samples(keys, partition, {"v": column})
        out = client.get_samples(keys, partition, ["v"])["v"]
        assert out.dtype == column.dtype and out.shape == column.shape
        assert value_picture(out) == value_picture(column)
    finally:
        client.clear_samples(None, partition)


def test_nan_and_inf_tags_are_kept_and_do_not_break_group_listing(client, pid):
    client.put_samples(
        ["a", "b"],
        pid,
        None,
        tags=[
            {"group_id": "g", "reward": math.nan, "weight_version": math.inf},
            {"group_id": "h", "created_at": -math.inf},
        ],
    )
    listed = client.list_keys(pid)[pid]
    assert math.isnan(listed["a"]["reward"]) and listed["b"]["created_at"] == -math.inf
    g, h = client.list_metadata(pid)
    assert g.weight_version is None and h.created_at == -math.inf


# ---------------------------------------------------------------------- the facade


def _nested(n):
    return torch.nested.nested_tensor([torch.ones(i + 1) for i in range(n)], layout=torch.jagged)


_BAD_FACADE_CALLS = {
    "put-non-string-key": lambda p: kvplane.kv_put(7, p, fields={"x": torch.ones(2)}),
    "put-nothing": lambda p: kvplane.kv_put("k", p),
    "put-empty-fields": lambda p: kvplane.kv_put("k", p, fields={}),
    "put-fields-not-a-mapping": lambda p: kvplane.kv_put("k", p, fields=[1, 2]),
    "put-nested-tensor": lambda p: kvplane.kv_put("k", p, fields={"x": _nested(2)}),
    "put-tag-not-a-dict": lambda p: kvplane.kv_put("k", p, fields={"x": torch.ones(2)}, tag="t"),
    "put-bad-partition": lambda p: kvplane.kv_put("k", "", fields={"x": torch.ones(2)}),
    "batch-put-row-count": lambda p: kvplane.kv_batch_put(["a", "b"], p, fields={"x": torch.ones(3)}),
    "batch-put-duplicates": lambda p: kvplane.kv_batch_put(["a", "a"], p, fields={"x": torch.ones(2)}),
    "batch-put-nothing": lambda p: kvplane.kv_batch_put(["a"], p),
    "batch-put-keys-as-string": lambda p: kvplane.kv_batch_put("ab", p, fields={"x": torch.ones(2)}),
    "batch-put-tag-count": lambda p: kvplane.kv_batch_put(
        ["a"], p, fields={"x": torch.ones(1)}, tags=[{}, {}]
    ),
    "batch-put-dtype-drift": lambda p: kvplane.kv_batch_put(["k0"], p, fields={"x": torch.ones(1, 2).long()}),
    "get-unknown-key": lambda p: kvplane.kv_batch_get(["k0", "nope"], p),
    "get-unknown-partition": lambda p: kvplane.kv_batch_get(["k0"], p + "-unknown"),
    "get-unknown-field": lambda p: kvplane.kv_batch_get(["k0"], p, select_fields=["nope"]),
    "get-keys-not-names": lambda p: kvplane.kv_batch_get(5, p),
    "get-by-meta-not-a-meta": lambda p: kvplane.kv_batch_get_by_meta({"sample_ids": ["k0"]}),
    "get-by-meta-missing-key": lambda p: kvplane.kv_batch_get_by_meta(KVBatchMeta(p, None, ["gone"], ["x"])),
    "clear-non-string-key": lambda p: kvplane.kv_clear([5], p),
    "clear-bad-partition": lambda p: kvplane.kv_clear(["k0"], None),
    "list-bad-partition": lambda p: kvplane.kv_list(5),
    "async-put-non-string-key": lambda p: asyncio.run(
        kvplane.async_kv_put(7, p, fields={"x": torch.ones(1)})
    ),
    "async-get-unknown-key": lambda p: asyncio.run(kvplane.async_kv_batch_get(["nope"], p)),
    "async-clear-keys-not-names": lambda p: asyncio.run(kvplane.async_kv_clear([None], p)),
}


@pytest.fixture
def default_client():
    """The process-default client (the embedded one unless a test session initialised another); never
    closed here, so a shared deployment survives. After an earlier test's ``close()``, a new default."""
    try:
        return kvplane.get_client()
    except DataPlaneNotReady:
        return kvplane.init()


@pytest.mark.parametrize("name", sorted(_BAD_FACADE_CALLS))
def test_facade_rejects_bad_input_with_typed_errors_and_changes_nothing(default_client, pid, name):
    client = default_client
    _assert_rejected_without_trace(client, pid, lambda c, existing, fresh: _BAD_FACADE_CALLS[name](existing))


def test_facade_missing_reads_are_key_errors(default_client, pid):
    kvplane.kv_put("k", pid, fields={"x": torch.ones(2)})
    with pytest.raises(KeyError):
        kvplane.kv_batch_get(["k", "nope"], pid)
    with pytest.raises(DataPlaneKeyError, match="nope"):
        kvplane.kv_batch_get("k", pid, select_fields="nope")
    kvplane.kv_clear(None, pid)


def test_facade_object_values_round_trip(default_client, pid):
    kvplane.kv_put("k", pid, fields={"text": "hi", "obj": {"a": [1, 2]}, "x": torch.tensor([1.5, math.nan])})
    td = kvplane.kv_batch_get(["k"], pid)
    assert td.get("text").tolist() == ["hi"] and td.get("obj").tolist() == [{"a": [1, 2]}]
    assert td["x"].shape == (1, 2) and math.isnan(td["x"][0, 1])
    kvplane.kv_clear(None, pid)
