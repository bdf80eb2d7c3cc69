"""The loaders inside torch's and torchdata's loaders, without a collate_fn (memory backend)."""

from __future__ import annotations

import gc
import json

import pytest
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_convert

from kvplane import DataPlaneBadRequest
from loaders import MicroBatch
from tests.unit.test_loaders import dataset, delivered, fill, register

torchdata = pytest.importorskip("torchdata", reason="torchdata is a test dependency (kvplane[test])")
from torchdata import nodes  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402


def _xs(items) -> list[list[int]]:
    return [td["x"].tolist() for td, _ in items]


def test_the_item_passes_default_convert_unchanged(client, pid):
    register(client, pid, 4)
    fill(client, pid, range(4))
    item = next(iter(dataset(client, pid)))
    assert isinstance(item, MicroBatch) and default_convert(item) is item
    data, meta = item  # what trainers index today keeps working
    assert data is item[0] is item.data and meta is item[1] is item.meta and len(item) == 2
    assert data["x"].tolist() == [0, 1, 2, 3] and meta.sample_ids == ["s0", "s1", "s2", "s3"]


def test_a_plain_dataloader_delivers_each_sample_once(client, pid):
    register(client, pid, 22)
    fill(client, pid, range(22))
    items = list(DataLoader(dataset(client, pid, batch_size=4, micro_batch_size=2), batch_size=None))
    assert all(isinstance(item, MicroBatch) for item in items)
    assert _xs(items) == [[i, i + 1] for i in range(0, 22, 2)]  # in order, the short last step included
    assert delivered([[(xs, None) for xs in _xs(items)]]) == list(range(22))


def test_a_plain_dataloader_with_two_workers_on_the_embedded_backend_is_a_typed_error(client, pid):
    """Worker processes cannot reach an in-process store (the TransferQueue case is an e2e test)."""
    register(client, pid, 8)
    fill(client, pid, range(8))
    loader = DataLoader(dataset(client, pid), batch_size=None, num_workers=2, multiprocessing_context="fork")
    it = iter(loader)
    with pytest.raises(DataPlaneBadRequest, match="num_workers=2 needs a backend"):
        next(it)
    del it  # shut its worker processes down here, not in whichever thread collects it later
    gc.collect()
    assert client.list_keys(pid)[pid]  # nothing was claimed in this process's store
    assert _xs(DataLoader(dataset(client, pid), batch_size=None)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("stop_after", [1, 4, 7])
def test_stateful_dataloader_resumes_exactly_from_its_state_dict(client, pid, stop_after):
    n = 30  # 8 steps of 4, cut in micro-batches of 2; the last step is short
    register(client, pid, n)
    fill(client, pid, range(n))
    kw = {"batch_size": 4, "micro_batch_size": 2}
    first = StatefulDataLoader(dataset(client, pid, **kw), batch_size=None)
    it = iter(first)
    before = [next(it) for _ in range(stop_after)]
    state = json.loads(json.dumps(first.state_dict()))  # what a trainer writes to disk
    lost = [next(it) for _ in range(2)]  # trained after the checkpoint, then the process dies
    del it, first  # its prefetch threads stop, so only one leader is left
    gc.collect()
    second = StatefulDataLoader(dataset(client, pid, **kw), batch_size=None)
    second.load_state_dict(state)
    after = list(second)
    assert _xs(after)[:2] == _xs(lost)  # resumed at the micro-batch after the checkpoint
    assert sorted(x for xs in _xs(before) + _xs(after) for x in xs) == list(range(n))


def test_torchdata_nodes_resume_exactly(client, pid):
    n = 20
    register(client, pid, n)
    fill(client, pid, range(n))

    def loader():
        return nodes.Loader(nodes.Prefetcher(nodes.IterableWrapper(dataset(client, pid)), prefetch_factor=2))

    first = loader()
    it = iter(first)
    before = [next(it) for _ in range(2)]
    state = first.state_dict()
    del it, first  # the "crashed" trainer: its prefetch thread stops, so only one leader is left
    gc.collect()
    second = loader()
    second.load_state_dict(state)
    after = list(second)
    assert sorted(x for xs in _xs(before) + _xs(after) for x in xs) == list(range(n))
    assert _xs(after)[0] == [8, 9, 10, 11]
