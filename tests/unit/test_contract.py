"""The DataPlaneClient contract, written once and run against every backend.

The tests use two fixtures: ``client`` (a DataPlaneClient) and ``pid`` (a fresh partition id).
tests/unit/conftest.py provides them for the memory backend; tests/e2e re-imports this module with
TransferQueue clients. Tests never close ``client`` (a TransferQueue session is shared).
"""

from __future__ import annotations

import inspect
import math
import threading
import time

import pytest
import torch
from tensordict import TensorDict

from kvplane import (
    DataPlaneBadRequest,
    DataPlaneCapabilities,
    DataPlaneClient,
    DataPlaneError,
    DataPlaneKeyError,
    DataPlaneTimeout,
    KVBatchMeta,
    internal_partition,
    is_internal_partition,
)
from kvplane._tensors import make_object_column
from loaders import StreamingDataset
from loaders._control import plan_partition_id
from tests.snapshots import store_snapshot


def _td(n: int, **columns) -> TensorDict:
    return TensorDict(columns, batch_size=[n])


# ---------------------------------------------------------------------- direct-by-key


def test_put_get_round_trip_follows_requested_order(client, pid):
    client.put_samples(["a", "b", "c"], pid, _td(3, x=torch.arange(6).view(3, 2)))
    td = client.get_samples(["c", "a"], pid, ["x"])
    assert td.batch_size == torch.Size([2])
    assert td["x"].tolist() == [[4, 5], [0, 1]]


@pytest.mark.parametrize(
    "column",
    [
        torch.randn(4, 8).to(torch.bfloat16),
        torch.randn(4, 8, dtype=torch.float32),
        torch.arange(4 * 8, dtype=torch.int64).view(4, 8),
        torch.tensor([[True, False], [False, False], [True, True], [False, True]]),
        torch.tensor([1.5, -2.0, 3.25, 0.0]),
        torch.arange(4, dtype=torch.int64),
        torch.randn(4, 3, 5),
    ],
    ids=["bf16_BL", "f32_BL", "i64_BL", "bool_BL", "f32_B", "i64_B", "f32_BLD"],
)
def test_dense_dtypes_and_shapes_round_trip_exactly(client, pid, column):
    keys = [f"k{i}" for i in range(4)]
    client.put_samples(keys, pid, _td(4, v=column))
    out = client.get_samples(keys, pid, ["v"])["v"]
    assert not out.is_nested
    assert out.dtype == column.dtype
    assert out.shape == column.shape
    assert torch.equal(out, column)


def test_ragged_rows_come_back_jagged(client, pid):
    rows = [torch.arange(n, dtype=torch.int64) for n in (3, 1, 4)]
    nested = torch.nested.nested_tensor(rows, layout=torch.jagged)
    client.put_samples(["r0", "r1", "r2"], pid, _td(3, ids=nested))
    out = client.get_samples(["r2", "r0"], pid, ["ids"])["ids"]
    assert out.is_nested
    assert [t.tolist() for t in out.unbind()] == [rows[2].tolist(), rows[0].tolist()]


def test_non_tensor_columns_round_trip(client, pid):
    values = ["hello", {"role": "user", "n": 1}, [1, 2, 3]]
    client.put_samples(["o0", "o1", "o2"], pid, _td(3, obj=make_object_column(values), x=torch.zeros(3)))
    out = client.get_samples(["o2", "o1", "o0"], pid, ["obj"])
    assert out.get("obj").tolist() == values[::-1]


def test_nan_and_inf_are_stored_faithfully(client, pid):
    x = torch.tensor([math.nan, math.inf, -math.inf, 0.0])
    client.put_samples(["n0", "n1", "n2", "n3"], pid, _td(4, x=x))
    out = client.get_samples(["n0", "n1", "n2", "n3"], pid, ["x"])["x"]
    assert torch.isnan(out[0]) and out[1] == math.inf and out[2] == -math.inf and out[3] == 0


def test_upsert_adds_and_replaces_columns_and_keeps_others(client, pid):
    client.put_samples(["a", "b"], pid, _td(2, x=torch.tensor([1, 2]), y=torch.tensor([10, 20])))
    meta = client.put_samples(["a"], pid, _td(1, x=torch.tensor([5]), z=torch.tensor([7.0])))
    assert meta.fields == ["x", "y", "z"]  # every field "a" now holds, in first-write order
    td = client.get_samples(["a"], pid, ["x", "y", "z"])
    assert td["x"].tolist() == [5] and td["y"].tolist() == [10] and td["z"].tolist() == [7.0]
    assert client.get_samples(["b"], pid, ["x"])["x"].tolist() == [2]


def test_tags_merge_and_tag_only_put_is_legal(client, pid):
    client.put_samples(["a"], pid, _td(1, x=torch.ones(1)), tags=[{"t": 1, "u": "x"}])
    meta = client.put_samples(["a"], pid, None, tags=[{"t": 2, "v": True}])
    assert meta.fields == ["x"]  # a tag-only put names the fields the key holds
    assert meta.tags == [{"t": 2, "u": "x", "v": True}]
    assert client.list_keys(pid) == {pid: {"a": {"t": 2, "u": "x", "v": True}}}
    assert client.get_samples(["a"], pid, ["x"])["x"].tolist() == [1.0]


def test_a_key_may_carry_only_tags(client, pid):
    client.put_samples(["t"], pid, None, tags=[{"group_id": "g"}])
    assert client.list_keys(pid)[pid] == {"t": {"group_id": "g"}}
    with pytest.raises(DataPlaneKeyError, match="x"):
        client.get_samples(["t"], pid, ["x"])
    with pytest.raises(DataPlaneKeyError, match="no field"):
        client.get_samples(["t"], pid, None)  # never an empty TensorDict


def test_put_meta_lists_every_field_the_keys_now_hold(client, pid):
    client.put_samples(["a", "b"], pid, _td(2, x=torch.tensor([1, 2])))
    client.put_samples(["a"], pid, _td(1, z=torch.tensor([9.0])))
    second = client.put_samples(["a", "b"], pid, _td(2, y=torch.tensor([3, 4])))
    assert second.fields == ["x", "y"]  # "z" is held by "a" only
    td = client.get_data(second)
    assert td["x"].tolist() == [1, 2] and td["y"].tolist() == [3, 4]
    assert client.put_samples(["a"], pid, None, tags=[{"t": 1}]).fields == ["x", "z", "y"]
    assert client.put_samples(["only-tags"], pid, None, tags=[{"t": 1}]).fields is None


def test_put_meta_carries_merged_tags_and_sequence_lengths(client, pid):
    meta = client.put_samples(
        ["a", "b"], pid, _td(2, x=torch.zeros(2, 3)), tags=[{"seq_len": 3}, {"seq_len": 2}]
    )
    assert meta.partition_id == pid and meta.sample_ids == ["a", "b"] and meta.task_name is None
    assert meta.sequence_lengths == [3, 2]


def test_missing_key_raises_and_never_returns_fewer_rows(client, pid):
    client.put_samples(["a"], pid, _td(1, x=torch.ones(1)))
    with pytest.raises(DataPlaneKeyError, match="nope"):
        client.get_samples(["a", "nope"], pid, ["x"])


def test_missing_field_raises(client, pid):
    client.put_samples(["a", "b"], pid, _td(2, x=torch.ones(2)))
    client.put_samples(["a"], pid, _td(1, y=torch.ones(1)))
    with pytest.raises(DataPlaneKeyError, match="y"):
        client.get_samples(["a", "b"], pid, ["x", "y"])
    with pytest.raises(DataPlaneKeyError, match="zzz"):
        client.get_samples(["a"], pid, ["zzz"])


def test_unknown_partition_raises_on_read(client, pid):
    with pytest.raises(DataPlaneKeyError, match=pid):
        client.get_samples(["a"], pid, ["x"])


def test_select_none_returns_every_field_or_names_the_difference(client, pid):
    client.put_samples(["a", "b"], pid, _td(2, x=torch.ones(2), y=torch.zeros(2)))
    assert sorted(client.get_samples(["a", "b"], pid, None).keys()) == ["x", "y"]
    client.put_samples(["a"], pid, _td(1, z=torch.ones(1)))
    with pytest.raises(DataPlaneBadRequest, match="z"):
        client.get_samples(["a", "b"], pid, None)


def test_empty_id_lists(client, pid):
    assert client.put_samples([], pid, None).sample_ids == []
    td = client.get_samples([], pid, ["x"])
    assert td.batch_size == torch.Size([0])
    client.clear_samples([], pid)


@pytest.mark.parametrize(
    "bad_call",
    [
        pytest.param(lambda c, p: c.put_samples(["a", "a"], p, _td(2, x=torch.ones(2))), id="duplicate-keys"),
        pytest.param(
            lambda c, p: c.put_samples(["a", "b"], p, _td(2, x=torch.ones(2)), tags=[{}]), id="tag-count"
        ),
        pytest.param(lambda c, p: c.put_samples(["a", "b"], p, _td(3, x=torch.ones(3))), id="batch-size"),
        pytest.param(lambda c, p: c.put_samples(["a", 7], p, _td(2, x=torch.ones(2))), id="non-string-key"),
        pytest.param(lambda c, p: c.put_samples(["a", ""], p, _td(2, x=torch.ones(2))), id="empty-key"),
        pytest.param(lambda c, p: c.put_samples("ab", p, {"x": torch.ones(2)}), id="string-as-keys"),
        pytest.param(
            lambda c, p: c.put_samples(["q"], p, _td(1, old=torch.ones(1, dtype=torch.int64))),
            id="dtype-drift",
        ),
        pytest.param(lambda c, p: c.put_samples(["q"], p, {"x": object()}), id="bad-column-type"),
        pytest.param(lambda c, p: c.put_samples(["q"], p, None, tags=[{1: "x"}]), id="non-string-tag-name"),
        pytest.param(lambda c, p: c.put_samples(["q"], p, None, None), id="neither-fields-nor-tags"),
        pytest.param(lambda c, p: c.claim_meta(p, "t", [], 1, blocking=False), id="claim-without-fields"),
        pytest.param(
            lambda c, p: c.claim_meta(p, "t", ["old"], 1, timeout_s=float("inf")), id="infinite-timeout"
        ),
    ],
)
def test_rejected_writes_raise_bad_request_and_leave_no_trace(client, pid, bad_call):
    client.put_samples(["keep"], pid, _td(1, old=torch.ones(1)), tags=[{"g": 1}])
    before = store_snapshot(client, pid)
    with pytest.raises(DataPlaneBadRequest):
        bad_call(client, pid)
    assert store_snapshot(client, pid) == before


def test_stored_data_is_isolated_from_caller_edits(client, pid):
    x = torch.arange(4.0)
    client.put_samples(["a", "b", "c", "d"], pid, _td(4, x=x))
    x.zero_()
    out = client.get_samples(["a", "b", "c", "d"], pid, ["x"])["x"]
    out.fill_(-1)
    assert client.get_samples(["a", "b", "c", "d"], pid, ["x"])["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_clear_is_idempotent_and_removes_data_and_tags(client, pid):
    client.put_samples(["a", "b"], pid, _td(2, x=torch.ones(2)), tags=[{"t": 1}, {"t": 2}])
    client.clear_samples(["a", "gone"], pid)
    client.clear_samples(["a"], pid)
    assert list(client.list_keys(pid)[pid]) == ["b"]
    with pytest.raises(DataPlaneKeyError):
        client.get_samples(["a"], pid, ["x"])
    client.clear_samples(["a"], pid + "-never-existed")


def test_clear_none_clears_the_whole_partition(client, pid):
    client.register_partition(pid, ["x"], num_samples=2, consumer_tasks=["train"])
    client.put_samples(["a", "b"], pid, _td(2, x=torch.ones(2)))
    client.clear_samples(None, pid)
    assert client.list_keys(pid) == {}
    assert client.list_sample_ids(pid) == []
    with pytest.raises(DataPlaneKeyError):
        client.get_samples(["a"], pid, ["x"])
    # The registration went too: the partition can be declared afresh, with other tasks.
    client.put_samples(["c"], pid, _td(1, x=torch.ones(1)))
    assert client.claim_meta(pid, "other", ["x"], 1, blocking=False).sample_ids == ["c"]


def test_partitions_are_isolated(client, pid):
    other = pid + "-other"
    client.put_samples(["k"], pid, _td(1, x=torch.tensor([1])), tags=[{"p": 1}])
    client.put_samples(["k"], other, _td(1, x=torch.tensor([2])), tags=[{"p": 2}])
    assert client.get_samples(["k"], pid, ["x"])["x"].tolist() == [1]
    assert client.list_keys(other) == {other: {"k": {"p": 2}}}
    assert client.claim_meta(pid, "t", ["x"], 1, blocking=False).sample_ids == ["k"]
    assert client.claim_meta(other, "t", ["x"], 1, blocking=False).sample_ids == ["k"]
    client.clear_samples(None, other)
    assert client.get_samples(["k"], pid, ["x"])["x"].tolist() == [1]


def test_list_keys_of_unknown_partition_is_empty(client, pid):
    assert client.list_keys(pid) == {}
    client.put_samples(["a"], pid, None, tags=[{"x": 1}])
    assert pid in client.list_keys(None)


def test_kvplane_internal_partitions_are_listed_only_by_name(client, pid):
    internal = internal_partition("plans", f"{pid}:train")
    client.put_samples(["step-0"], internal, None, tags=[{"plan": 1}])
    assert internal not in client.list_keys(None)
    assert client.list_keys(internal) == {internal: {"step-0": {"plan": 1}}}
    client.clear_samples(None, internal)


@pytest.mark.parametrize(
    "call",
    [
        lambda c, p: c.put_samples(["k"], p, None, tags=[{}]),
        lambda c, p: c.register_partition(p, ["x"], 1, ["t"]),
        lambda c, p: c.get_samples(["k"], p, ["x"]),
        lambda c, p: c.claim_meta(p, "t", ["x"], 1, blocking=False),
        lambda c, p: c.clear_samples(None, p),
        lambda c, p: c.list_keys(p),
        lambda c, p: c.check_consumption_status(p, ["t"]),
    ],
    ids=["put", "register", "get", "claim", "clear", "list", "consumption"],
)
def test_a_backends_own_records_cannot_be_named(client, pid, call):
    with pytest.raises(DataPlaneBadRequest, match="reserved"):
        call(client, internal_partition("backend", pid))


def test_every_internal_partition_is_hidden_after_a_loader_run(client, pid):
    client.register_partition(pid, ["x"], num_samples=4, consumer_tasks=["train"])
    client.put_samples([f"k{i}" for i in range(4)], pid, _td(4, x=torch.arange(4)))
    loader = StreamingDataset(
        client, partition_id=pid, task_name="train", fields=["x"], batch_size=2, dp_rank=0, dp_world=1
    )
    assert sorted(k for _, meta in loader for k in meta.sample_ids) == ["k0", "k1", "k2", "k3"]
    plans = plan_partition_id(pid, "train")
    assert is_internal_partition(plans) and client.list_keys(plans)[plans]  # the run left its plan log
    listed = client.list_keys(None)
    assert pid in listed and not [p for p in listed if is_internal_partition(p)]
    client.clear_samples(None, plans)


# ---------------------------------------------------------------------- task-mediated


def test_claim_advances_consumption_exactly_once(client, pid):
    client.register_partition(pid, ["x"], num_samples=4, consumer_tasks=["train"])
    client.put_samples(["a", "b", "c", "d"], pid, _td(4, x=torch.arange(4)))
    assert client.check_consumption_status(pid, ["train"]) is False
    first = client.claim_meta(pid, "train", ["x"], 2)
    second = client.claim_meta(pid, "train", ["x"], 2)
    assert first.size == 2 and second.size == 2
    assert sorted(first.sample_ids + second.sample_ids) == ["a", "b", "c", "d"]
    assert first.task_name == "train" and first.fields == ["x"]
    assert client.check_consumption_status(pid, ["train"]) is True
    assert client.claim_meta(pid, "train", ["x"], 2, blocking=False).sample_ids == []


def test_short_last_batch_when_num_samples_is_known(client, pid):
    client.register_partition(pid, ["x"], num_samples=10, consumer_tasks=["train"])
    client.put_samples([f"s{i}" for i in range(10)], pid, _td(10, x=torch.arange(10)))
    sizes = [client.claim_meta(pid, "train", ["x"], 4, timeout_s=5).size for _ in range(3)]
    assert sizes == [4, 4, 2]
    assert client.claim_meta(pid, "train", ["x"], 4, timeout_s=5).size == 0
    assert client.check_consumption_status(pid, ["train"]) is True


def test_non_blocking_claim_returns_empty_and_blocking_claim_times_out(client, pid):
    client.put_samples(["a"], pid, _td(1, x=torch.ones(1)))
    empty = client.claim_meta(pid, "t", ["x"], 2, blocking=False)
    assert empty.sample_ids == [] and empty.fields == ["x"]
    start = time.monotonic()
    with pytest.raises(DataPlaneTimeout):
        client.claim_meta(pid, "t", ["x"], 2, timeout_s=0.3)
    assert time.monotonic() - start < 10
    with pytest.raises(TimeoutError):
        client.claim_meta(pid, "t", ["x"], 2, timeout_s=0.0)


def test_claim_waits_for_every_required_field(client, pid):
    client.put_samples(["a", "b"], pid, _td(2, prompt=torch.ones(2)))
    assert client.claim_meta(pid, "train", ["prompt", "reward"], 2, blocking=False).size == 0
    client.put_samples(["a", "b"], pid, _td(2, reward=torch.zeros(2)))
    assert sorted(client.claim_meta(pid, "train", ["prompt", "reward"], 2, blocking=False).sample_ids) == [
        "a",
        "b",
    ]


def test_claim_skips_incomplete_keys_as_keys_come_and_go(client, pid):
    client.put_samples(["a", "b"], pid, _td(2, prompt=torch.ones(2), reward=torch.zeros(2)))
    client.put_samples(["c"], pid, _td(1, prompt=torch.ones(1)))  # no reward yet
    client.put_samples(["d"], pid, _td(1, prompt=torch.ones(1), reward=torch.zeros(1)))
    claimed = client.claim_meta(pid, "train", ["prompt", "reward"], 3, blocking=False)
    # Claim order is the backend's (write order embedded; TransferQueue's slot order, which reuses
    # slots freed by clears anywhere in the deployment): the claimed *set* is the contract.
    assert sorted(claimed.sample_ids) == ["a", "b", "d"]
    client.clear_samples(["c"], pid)
    client.put_samples(["e", "c"], pid, _td(2, prompt=torch.ones(2), reward=torch.zeros(2)))
    assert sorted(client.claim_meta(pid, "train", ["prompt", "reward"], 2, blocking=False).sample_ids) == ["c", "e"]
    assert client.claim_meta(pid, "train", ["prompt"], 1, blocking=False).size == 0


def test_blocking_claim_wakes_when_a_producer_writes(client, pid):
    def produce():
        time.sleep(0.3)
        client.put_samples(["late0", "late1"], pid, _td(2, x=torch.ones(2)))

    producer = threading.Thread(target=produce)
    producer.start()
    meta = client.claim_meta(pid, "train", ["x"], 2, timeout_s=30)
    producer.join()
    assert sorted(meta.sample_ids) == ["late0", "late1"]


def test_claimed_meta_carries_tags_and_sequence_lengths(client, pid):
    client.put_samples(
        ["a", "b"],
        pid,
        _td(2, x=torch.ones(2)),
        tags=[{"seq_len": 5, "group_id": "g"}, {"seq_len": 7, "group_id": "g"}],
    )
    meta = client.claim_meta(pid, "train", ["x"], 2)
    by_id = dict(zip(meta.sample_ids, meta.sequence_lengths, strict=True))
    assert by_id == {"a": 5, "b": 7}
    assert [t["group_id"] for t in meta.tags] == ["g", "g"]


def test_claimed_sequence_lengths_prefer_nemo_rls_input_lengths_tag(client, pid):
    client.put_samples(
        ["a", "b"],
        pid,
        _td(2, x=torch.ones(2)),
        tags=[{"input_lengths": 11, "seq_len": 5}, {"seq_len": 7}],
    )
    meta = client.claim_meta(pid, "train", ["x"], 2)
    by_id = dict(zip(meta.sample_ids, meta.sequence_lengths, strict=True))
    assert by_id == {"a": 11, "b": 0}  # as NeMo-RL: a sample without the tag counts 0


def test_tasks_have_independent_cursors(client, pid):
    client.put_samples(["a", "b"], pid, _td(2, x=torch.ones(2)))
    assert client.claim_meta(pid, "t1", ["x"], 2).size == 2
    assert client.claim_meta(pid, "t2", ["x"], 2).size == 2
    assert client.check_consumption_status(pid, ["t1", "t2"]) is True


def test_claim_by_an_unregistered_task_is_a_key_error(client, pid):
    client.register_partition(pid, ["x"], num_samples=None, consumer_tasks=["train"])
    client.put_samples(["a"], pid, _td(1, x=torch.ones(1)))
    with pytest.raises(DataPlaneKeyError, match="trian"):
        client.claim_meta(pid, "trian", ["x"], 1, blocking=False)


def test_register_partition_again_overwrites(client, pid):
    client.register_partition(pid, ["x"], num_samples=1, consumer_tasks=["a"])
    client.register_partition(pid, ["x", "y"], num_samples=3, consumer_tasks=["b"])
    client.put_samples(["s0", "s1", "s2"], pid, _td(3, x=torch.ones(3)))
    assert client.claim_meta(pid, "b", ["x"], 2).size == 2
    assert client.claim_meta(pid, "b", ["x"], 2).size == 1
    with pytest.raises(DataPlaneKeyError):
        client.claim_meta(pid, "a", ["x"], 1, blocking=False)


def test_get_data_reads_the_meta_and_requires_fields(client, pid):
    client.put_samples(["a", "b"], pid, _td(2, x=torch.tensor([1, 2]), y=torch.tensor([3, 4])))
    meta = client.claim_meta(pid, "train", ["x"], 2)
    assert sorted(client.get_data(meta).keys()) == ["x"]
    assert sorted(client.get_data(meta, ["x", "y"]).keys()) == ["x", "y"]
    with pytest.raises(ValueError, match="select_fields|fields"):
        client.get_data(KVBatchMeta(pid, None, ["a"]))


def test_check_consumption_status_of_unknown_partition_raises(client, pid):
    with pytest.raises(DataPlaneKeyError):
        client.check_consumption_status(pid, ["train"])


def test_concurrent_claims_are_exactly_once(client, pid):
    n = 40
    client.register_partition(pid, ["x"], num_samples=n, consumer_tasks=["train"])
    client.put_samples([f"s{i:02d}" for i in range(n)], pid, _td(n, x=torch.arange(n)))
    got: list[str] = []
    lock = threading.Lock()

    def consume():
        while True:
            meta = client.claim_meta(pid, "train", ["x"], 3, timeout_s=10)
            if meta.size == 0:
                return
            with lock:
                got.extend(meta.sample_ids)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == [f"s{i:02d}" for i in range(n)]


# ---------------------------------------------------------------------- recovery / control plane


def test_list_metadata_is_non_consuming_and_depth_counts_committed_complete_groups(client, pid):
    group = {
        "group_id": "g1",
        "committed": True,
        "expected_num_keys": 2,
        "weight_version": 2,
        "created_at": 100.0,
    }
    client.put_samples(
        ["a", "b", "c"],
        pid,
        _td(3, x=torch.ones(3)),
        tags=[group, group, {"group_id": "g2", "committed": False}],
    )
    first = client.list_metadata(pid)
    assert first == client.list_metadata(pid)
    g1, g2 = first
    assert g1.keys == ["a", "b"] and g1.weight_version == 2 and g1.committed and g1.is_complete
    assert g1.created_at == 100.0 and not g2.committed
    assert client.depth(pid) == 1
    assert sorted(client.claim_meta(pid, "train", ["x"], 3).sample_ids) == ["a", "b", "c"]


def test_pop_and_evict_remove_keys(client, pid):
    client.put_samples(["a", "b", "c", "stale"], pid, None, tags=[{"group_id": "g"}] * 3 + [{}])
    client.pop(["a", "b"], pid)
    assert client.list_sample_ids(pid) == ["c", "stale"]
    client.evict(["c", "stale"], pid)
    assert client.list_metadata(pid) == []


def test_list_sample_ids_is_sorted(client, pid):
    client.put_samples(["b", "c", "a"], pid, None, tags=[{}, {}, {}])
    assert client.list_sample_ids(pid) == ["a", "b", "c"]
    assert client.list_sample_ids(pid + "-unknown") == []


def test_ping_and_capabilities(client):
    client.ping(timeout_s=10)
    assert isinstance(client.get_capabilities(), DataPlaneCapabilities)


# ---------------------------------------------------------------------- the ABC (NeMo-RL's surface)

#: NeMo-RL's abstract methods and their parameters (nemo_rl/data_plane/interfaces.py, main branch).
NEMO_RL_CORE = {
    "register_partition": [
        "self", "partition_id", "fields", "num_samples", "consumer_tasks", "grpo_group_size", "enums"
    ],
    "claim_meta": [
        "self", "partition_id", "task_name", "required_fields", "batch_size", "dp_rank", "blocking",
        "timeout_s",
    ],
    "get_data": ["self", "meta", "select_fields"],
    "check_consumption_status": ["self", "partition_id", "task_names"],
    "put_samples": ["self", "sample_ids", "partition_id", "fields", "tags"],
    "get_samples": ["self", "sample_ids", "partition_id", "select_fields"],
    "clear_samples": ["self", "sample_ids", "partition_id"],
    "close": ["self"],
}  # fmt: skip


class _NemoRLStyleAdapter(DataPlaneClient):
    """An adapter that implements NeMo-RL's eight methods and nothing else (rows in a dict)."""

    def __init__(self):
        self.rows = {}

    def register_partition(
        self, partition_id, fields, num_samples, consumer_tasks, grpo_group_size=None, enums=None
    ):
        pass

    def claim_meta(
        self, partition_id, task_name, required_fields, batch_size, dp_rank=None, blocking=True, timeout_s=60
    ):
        return KVBatchMeta(partition_id, task_name, [])

    def get_data(self, meta, select_fields=None):
        return self.get_samples(meta.sample_ids, meta.partition_id, select_fields or meta.fields)

    def check_consumption_status(self, partition_id, task_names):
        return True

    def put_samples(self, sample_ids, partition_id, fields=None, tags=None):
        self.rows.update({(partition_id, k): fields[i] for i, k in enumerate(sample_ids)})
        return KVBatchMeta(partition_id, None, list(sample_ids))

    def get_samples(self, sample_ids, partition_id, select_fields):
        return torch.stack([self.rows[(partition_id, k)] for k in sample_ids])

    def clear_samples(self, sample_ids, partition_id):
        for key in sample_ids or [k for p, k in list(self.rows) if p == partition_id]:
            self.rows.pop((partition_id, key), None)

    def close(self):
        pass


def test_the_abstract_methods_are_exactly_nemo_rls_eight():
    assert DataPlaneClient.__abstractmethods__ == set(NEMO_RL_CORE)
    for name, parameters in NEMO_RL_CORE.items():
        assert list(inspect.signature(getattr(DataPlaneClient, name)).parameters) == parameters, name


def test_a_nemo_rl_style_adapter_subclasses_the_base_unchanged():
    adapter = _NemoRLStyleAdapter()
    adapter.put_samples(["a", "b"], "p", torch.tensor([[1], [2]]))
    assert adapter.get_data(KVBatchMeta("p", None, ["b"], fields=["x"])).tolist() == [[2]]
    adapter.pop(["a"], "p")  # derived from clear_samples
    assert list(adapter.rows) == [("p", "b")]
    assert adapter.get_capabilities() == DataPlaneCapabilities()
    for call in (
        adapter.ping,
        adapter.list_keys,
        lambda: adapter.list_sample_ids("p"),
        lambda: adapter.list_metadata("p"),
        lambda: adapter.depth("p"),
    ):
        with pytest.raises(DataPlaneError, match="not supported by this backend"):
            call()
    with adapter:
        pass
