"""Any call of the public API with generated arguments raises nothing outside the DataPlaneError tree.

Every facade ``kv_*`` function, every ``DataPlaneClient`` method but ``close``, both ``KVBatchMeta``
constructors and ``shard_meta_for_dp`` are called with arguments that hypothesis draws per position:
either a valid value or one from a pool mixing wrong types, boundary numbers (``10**30``, ``1e10``,
NaN), lone surrogates, sparse and meta-device tensors, objects that cannot be copied (a lock, a
generator) and callables that raise. A call may succeed or raise a ``DataPlaneError``; anything else
is a bug.

Backend-neutral: :func:`call_with_drawn_arguments` needs only a client and a partition id, so
tests/e2e/test_fuzz_tq.py runs the same calls on TransferQueue SimpleStorage with fewer examples.
Blocking waits are kept short: ``claim_meta``'s deadline is drawn from values that are either invalid
or at most 0.01 s.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

import kvplane
from kvplane import DataPlaneError, DataPlaneNotReady, KVBatchMeta, shard_meta_for_dp


def _generator():
    return (i for i in range(2))


def _raising_parser(batch):
    raise RuntimeError("a parser that fails")


#: Values that are wrong somewhere (and sometimes right): the pool every argument may draw from.
def junk() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.sampled_from([0, 1, 2, -1, 10**30, 2**63, 1e10, math.inf, -math.inf, math.nan, 1e-300]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=4),
        st.sampled_from(["", "k0", "x", "bad\ud800", "__kvplane__/backend/p", "__kvplane__/plans/p"]),
        st.lists(st.sampled_from(["k0", "k1", "x", "", "bad\ud800", 3, None]), max_size=3),
        st.dictionaries(st.sampled_from(["x", "k0", "t", "bad\ud800", 1]), st.integers(), max_size=2),
        st.builds(lambda: {"x": torch.ones(2)}),
        st.builds(lambda: {"x": [threading.Lock(), 1]}),
        st.builds(lambda: {"x": torch.eye(2).to_sparse()}),
        st.builds(lambda: {"x": torch.empty(2, 3, device="meta")}),
        st.builds(lambda: [{"t": [1]}, {"t": threading.Lock()}]),
        st.builds(lambda: torch.ones(2, 3)),
        st.builds(lambda: TensorDict(x=torch.ones(2, 2), batch_size=[2])),
        st.builds(lambda: KVBatchMeta("p", None, ["k0"], fields=["x"])),
        st.builds(threading.Lock),
        st.builds(_generator),
        st.just(_raising_parser),
        st.just(lambda batch: batch),
        st.just(object()),
    )


_SHORT_WAITS = st.one_of(
    st.sampled_from([0, 0.001, 0.01, -1, 1e10, math.nan, math.inf, None, "1"]), junk()
).filter(lambda v: not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.01 < v < 1e10))


def _valid_put(pid: str) -> tuple:
    return (["k0", "k1"], pid, {"x": torch.ones(2, 3)}, [{"t": 1}, {"t": 2}])


def _meta(pid: str) -> KVBatchMeta:
    return KVBatchMeta(pid, "t", ["k0", "k1"], fields=["x"], sequence_lengths=[3, 3], tags=[{}, {}])


#: name -> (function of (client, pid) returning the callable, function of pid returning valid arguments)
#: Arguments are positional; the last entries of a tuple may be keyword-only, given as a dict.
CALLS: dict[str, tuple[Callable[[Any], Callable[..., Any]], Callable[[str], tuple]]] = {
    "register_partition": (
        lambda c: c.register_partition,
        lambda p: (p, ["x"], 2, ["t"], None, {"x": ["a"]}),
    ),
    "claim_meta": (
        lambda c: c.claim_meta,
        lambda p: (p, "t", ["x"], 1, None, False, 0.01),
    ),
    "get_data": (lambda c: c.get_data, lambda p: (_meta(p), ["x"])),
    "check_consumption_status": (lambda c: c.check_consumption_status, lambda p: (p, ["t"])),
    "put_samples": (lambda c: c.put_samples, _valid_put),
    "get_samples": (lambda c: c.get_samples, lambda p: (["k0"], p, ["x"])),
    "clear_samples": (lambda c: c.clear_samples, lambda p: (["k0"], p)),
    "ping": (lambda c: c.ping, lambda p: (1.0,)),
    "list_keys": (lambda c: c.list_keys, lambda p: (p,)),
    "list_metadata": (lambda c: c.list_metadata, lambda p: (p,)),
    "list_sample_ids": (lambda c: c.list_sample_ids, lambda p: (p,)),
    "depth": (lambda c: c.depth, lambda p: (p,)),
    "pop": (lambda c: c.pop, lambda p: (["k0"], p)),
    "evict": (lambda c: c.evict, lambda p: (["k1"], p)),
    "get_capabilities": (lambda c: c.get_capabilities, lambda p: ()),
    "kv_put": (lambda c: kvplane.kv_put, lambda p: ("k0", p, {"x": torch.ones(3)}, {"t": 1}, None)),
    "kv_batch_put": (lambda c: kvplane.kv_batch_put, lambda p: (*_valid_put(p), None)),
    "kv_batch_get": (lambda c: kvplane.kv_batch_get, lambda p: (["k0"], p, ["x"])),
    "kv_batch_get_by_meta": (lambda c: kvplane.kv_batch_get_by_meta, lambda p: (_meta(p), ["x"])),
    "kv_list": (lambda c: kvplane.kv_list, lambda p: (p,)),
    "kv_clear": (lambda c: kvplane.kv_clear, lambda p: (["k0"], p)),
    "KVBatchMeta-nemo-rl": (
        lambda c: KVBatchMeta,
        lambda p: (p, "t", ["k0"], ["x"], [3], {"a": 1}, [{"t": 1}]),
    ),
    "KVBatchMeta-transfer-queue": (
        lambda c: (
            lambda keys, tags, partition_id, fields, extra_info: KVBatchMeta(
                keys=keys, tags=tags, partition_id=partition_id, fields=fields, extra_info=extra_info
            )
        ),
        lambda p: (["k0", "k1"], [{}, {}], p, ["x"], {}),
    ),
    "shard_meta_for_dp": (
        lambda c: (
            lambda meta, dp_world, batch_size, balance, equal_count, group_tag: shard_meta_for_dp(
                meta,
                dp_world=dp_world,
                batch_size=batch_size,
                balance=balance,
                equal_count=equal_count,
                group_tag=group_tag,
            )
        ),
        lambda p: (_meta(p), 2, None, None, False, None),
    ),
}

#: Argument positions whose drawn values must keep waits short: name -> index.
_WAITS = {"claim_meta": 6}


def call_with_drawn_arguments(client: Any, pid: str, name: str, data: st.DataObject) -> None:
    """Call ``CALLS[name]``, each argument valid or drawn from :func:`junk`; only typed errors may escape."""
    target, valid = CALLS[name]
    args = []
    for i, good in enumerate(valid(pid)):
        pool = _SHORT_WAITS if _WAITS.get(name) == i else junk()
        args.append(data.draw(st.one_of(st.just(good), pool), label=f"{name}[{i}]"))
    try:
        target(client)(*args)
    except DataPlaneError:
        pass
    except BaseException as exc:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{name}{tuple(map(_short, args))} raised a raw {type(exc).__name__}: {exc}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def seed(client: Any, pid: str) -> None:
    """Two keys the valid arguments name, so drawn calls reach the store's deeper paths."""
    client.put_samples(["k0", "k1"], pid, {"x": torch.ones(2, 3)}, tags=[{"t": 1}, {"t": 2}])


FUZZ = settings(
    max_examples=25,
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as drawn: shrinking can take minutes
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)


@pytest.fixture
def default_client():
    """The facade's default client for this process (a fresh embedded one after an earlier close())."""
    try:
        yield kvplane.get_client()
    except DataPlaneNotReady:
        yield kvplane.init()


@pytest.mark.parametrize("name", sorted(CALLS))
@FUZZ
@given(data=st.data())
def test_no_raw_exception_escapes_the_public_api(default_client, pid, name, data):
    seed(default_client, pid)
    try:
        call_with_drawn_arguments(default_client, pid, name, data)
    finally:
        default_client.clear_samples(None, pid)
