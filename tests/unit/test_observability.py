"""MetricsDataPlaneClient events, stats and outstanding bytes; the Prometheus exporter."""

from __future__ import annotations

import logging
import re
import sys
import threading
import urllib.error
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from tensordict import TensorDict

import kvplane._prometheus
from kvplane import DataPlaneKeyError, DataPlaneTimeout, build_data_plane_client
from kvplane._config import ObservabilityConfig
from kvplane._factory import wrap_with_observability
from kvplane._observability import MetricsDataPlaneClient
from kvplane._prometheus import PrometheusExporter
from kvplane.adapters.memory import MemoryDataPlaneClient

EVENT_KEYS = {"op", "partition_id", "n_keys", "n_bytes", "wall_ms", "status"}


@pytest.fixture
def events():
    return []


@pytest.fixture
def metrics(client, events):
    """The conftest memory client wrapped, recording every event."""
    wrapped = MetricsDataPlaneClient(client, on_event=events.append)
    yield wrapped
    wrapped.close()


def _x(n: int, width: int = 4) -> TensorDict:
    return TensorDict(
        x=torch.ones(n, width, dtype=torch.float32), batch_size=[n]
    )  # 16 bytes per row at width 4


def _last(events, op):
    matching = [e for e in events if e["op"] == op]
    assert matching, f"no {op!r} event in {[e['op'] for e in events]}"
    return matching[-1]


# ---------------------------------------------------------------------------------------------- events
def test_every_method_emits_exactly_one_event_with_its_counts(metrics, events):
    tags = [
        {"group_id": "g0", "committed": True, "seq_len": 4},
        {"group_id": "g0", "committed": True, "seq_len": 4},
    ]
    calls = [
        (lambda: metrics.register_partition("p", ["x"], 2, ["train"]), ("register", "p", 2, 0)),
        (lambda: metrics.put_samples(["a", "b"], "p", _x(2), tags=tags), ("put", "p", 2, 32)),
        (lambda: metrics.claim_meta("p", "train", ["x"], 2, blocking=False), ("claim_meta", "p", 2, 0)),
        (lambda: metrics.get_samples(["b"], "p", ["x"]), ("get", "p", 1, 16)),
        (lambda: metrics.get_data(metrics.inner.claim_meta("p", "train", ["x"], 1, blocking=False)), None),
        (lambda: metrics.check_consumption_status("p", ["train"]), ("check_consumption_status", "p", 0, 0)),
        (lambda: metrics.list_keys("p"), ("list_keys", "p", 2, 0)),
        (lambda: metrics.list_keys(), ("list_keys", "", 2, 0)),
        (lambda: metrics.list_metadata("p"), ("list_metadata", "p", 1, 0)),
        (lambda: metrics.list_sample_ids("p"), ("list_sample_ids", "p", 2, 0)),
        (lambda: metrics.depth("p"), ("depth", "p", 0, 0)),
        (lambda: metrics.ping(), ("ping", "", 0, 0)),
        (lambda: metrics.pop(["a"], "p"), ("pop", "p", 1, 0)),
        (lambda: metrics.evict(["b", "gone"], "p"), ("evict", "p", 2, 0)),
        (lambda: metrics.clear_samples(["zz"], "p"), ("clear", "p", 1, 0)),
        (lambda: metrics.clear_samples(None, "p"), ("clear", "p", 0, 0)),
        (lambda: metrics.close(), ("close", "", 0, 0)),
    ]
    for call, expected in calls:
        before = len(events)
        call()
        new = events[before:]
        if expected is None:  # get_data of an empty claim: the one event reads nothing
            assert [(e["op"], e["partition_id"], e["n_keys"], e["n_bytes"]) for e in new] == [
                ("get_data", "p", 0, 0)
            ]
            continue
        assert len(new) == 1, (expected, new)
        event = new[0]
        assert set(event) == EVENT_KEYS
        assert (event["op"], event["partition_id"], event["n_keys"], event["n_bytes"]) == expected
        assert event["status"] == "ok"
        assert isinstance(event["wall_ms"], float) and event["wall_ms"] >= 0.0


def test_get_data_counts_meta_keys_and_result_bytes(metrics, events):
    metrics.register_partition("p", ["x"], 3, ["train"])
    metrics.put_samples(["a", "b", "c"], "p", _x(3, width=2))
    meta = metrics.claim_meta("p", "train", ["x"], 3)
    metrics.get_data(meta)
    assert _last(events, "get_data") | {"wall_ms": 0} == {
        "op": "get_data",
        "partition_id": "p",
        "n_keys": 3,
        "n_bytes": 24,
        "wall_ms": 0,
        "status": "ok",
    }


def test_put_bytes_measured_from_dict_and_list_inputs(metrics, events):
    rows = [torch.zeros(3, dtype=torch.int64), torch.zeros(5, dtype=torch.int64)]  # ragged: 64 bytes
    metrics.put_samples(["a", "b"], "p", {"ids": rows, "text": ["u", "v"], "r": torch.zeros(2)})
    assert _last(events, "put")["n_bytes"] == 64 + 8
    metrics.put_samples(["c"], "p", tags=[{"k": 1}])  # tag-only write: no bytes
    assert _last(events, "put")["n_bytes"] == 0
    assert metrics.stats.bytes_outstanding == 72


def test_get_capabilities_is_forwarded_without_an_event(metrics, events, client):
    assert metrics.get_capabilities() == client.get_capabilities()
    assert events == []


# ---------------------------------------------------------------------------------------------- failures
def test_errors_are_re_raised_and_counted_not_totalled(metrics, events):
    metrics.put_samples(["a"], "p", _x(1))
    with pytest.raises(DataPlaneKeyError, match="zz"):
        metrics.get_samples(["a", "zz"], "p", ["x"])
    assert _last(events, "get") | {"wall_ms": 0} == {
        "op": "get",
        "partition_id": "p",
        "n_keys": 2,
        "n_bytes": 0,
        "wall_ms": 0,
        "status": "error",
    }
    snap = metrics.snapshot()
    assert snap["total_ops"] == 1 and snap["total_errors"] == 1
    assert snap["errors_by_op"] == {"get": 1} and snap["timeouts_by_op"] == {}
    assert snap["total_bytes"] == 16  # only the successful put


def test_kvplane_timeout_is_classified_as_timeout(metrics, events):
    metrics.register_partition("p", ["x"], None, ["train"])
    with pytest.raises(DataPlaneTimeout):
        metrics.claim_meta("p", "train", ["x"], batch_size=1, timeout_s=0.01)
    assert _last(events, "claim_meta")["status"] == "timeout"
    assert metrics.snapshot()["timeouts_by_op"] == {"claim_meta": 1}


class _TimingOutPing(MemoryDataPlaneClient):
    def ping(self, timeout_s=None):
        raise TimeoutError("socket timed out")


def test_builtin_timeout_error_is_classified_as_timeout(events):
    metrics = MetricsDataPlaneClient(_TimingOutPing(), on_event=events.append)
    with pytest.raises(TimeoutError, match="socket timed out"):
        metrics.ping()
    assert [(e["op"], e["status"]) for e in events] == [("ping", "timeout")]


def test_failed_put_changes_no_accounting(metrics, events):
    metrics.put_samples(["a"], "p", _x(1))
    with pytest.raises(ValueError):
        metrics.put_samples(["b", "c"], "p", _x(3))  # 3 rows for 2 keys
    assert _last(events, "put")["status"] == "error"
    assert metrics.bytes_outstanding_by_partition() == {"p": 16}
    assert metrics.stats.last_put_bytes_per_key == 16


def test_a_failing_sink_never_breaks_an_operation(client, caplog):
    received = []

    def broken(event):
        raise RuntimeError("sink is down")

    metrics = MetricsDataPlaneClient(client, on_event=broken)
    metrics.add_sink(received.append)
    with caplog.at_level(logging.ERROR, logger="kvplane._observability"):
        meta = metrics.put_samples(["a"], "p", _x(1))
    assert meta.sample_ids == ["a"]
    assert metrics.get_samples(["a"], "p", ["x"])["x"].shape == (1, 4)
    assert [e["op"] for e in received] == ["put", "get"]
    assert "sink is down" in caplog.text and "failed on 'put'" in caplog.text
    assert metrics.stats.total_ops == 2


# ---------------------------------------------------------------------------------------------- stats
def test_stats_accumulate_successful_operations(metrics):
    metrics.put_samples(["a", "b"], "p", _x(2))  # 32 bytes, 16 per key
    metrics.put_samples(["c"], "p", _x(1, width=10))  # 40 bytes per key
    metrics.put_samples(["d", "e"], "p", _x(2, width=1))  # 4 per key
    metrics.get_samples(["a", "c"], "p", ["x"])  # rows of widths 4 and 10 come back jagged: 16 + 40 bytes
    snap = metrics.snapshot()
    assert snap["max_bytes_per_key_seen"] == 40
    assert snap["last_put_bytes_per_key"] == 4
    assert snap["ops_by_op"] == {"put": 3, "get": 1}
    assert snap["total_ops"] == 4
    assert snap["total_keys"] == 2 + 1 + 2 + 2
    assert snap["total_bytes"] == (32 + 40 + 8) + (16 + 40)


def test_outstanding_bytes_follow_put_replace_pop_evict_and_clear(metrics):
    stats = metrics.stats
    metrics.put_samples(["a", "b"], "p", _x(2))  # x: 16 per key
    assert (stats.bytes_outstanding, stats.peak_bytes_outstanding) == (32, 32)
    metrics.put_samples(["a", "b"], "p", _x(2))  # same field again: replaces
    assert stats.bytes_outstanding == 32
    metrics.put_samples(["a"], "p", {"y": torch.zeros(1, 2, dtype=torch.float64)})  # new field: adds 16
    assert metrics.bytes_outstanding_by_partition() == {"p": 48}
    metrics.put_samples(["a", "b", "c"], "q", _x(3, width=8))  # 96
    assert (stats.bytes_outstanding, stats.peak_bytes_outstanding) == (144, 144)
    assert metrics.snapshot()["n_keys_outstanding"] == 5

    metrics.pop(["a"], "p")  # frees both of a's fields
    assert metrics.bytes_outstanding_by_partition() == {"p": 16, "q": 96}
    metrics.evict(["b", "never-put"], "p")
    assert metrics.bytes_outstanding_by_partition() == {"q": 96}  # emptied partition dropped
    metrics.clear_samples(["c"], "q")
    assert stats.bytes_outstanding == 64
    metrics.put_samples(["z"], "p", _x(1))
    metrics.clear_samples(None, "q")  # the whole partition
    assert metrics.bytes_outstanding_by_partition() == {"p": 16}
    metrics.clear_samples(None, "p")
    snap = metrics.snapshot()
    assert (snap["bytes_outstanding"], snap["peak_bytes_outstanding"], snap["n_keys_outstanding"]) == (
        0,
        144,
        0,
    )
    metrics.clear_samples(None, "never-seen")  # unknown partition: nothing to free
    assert metrics.stats.bytes_outstanding == 0


def test_uneven_split_keeps_the_partition_total_exact(metrics):
    metrics.put_samples(["a", "b", "c"], "p", {"x": torch.zeros(3, 1, dtype=torch.uint8)})  # 1 byte per key
    rows = [
        torch.zeros(1, dtype=torch.uint8),
        torch.zeros(2, dtype=torch.uint8),
        torch.zeros(4, dtype=torch.uint8),
    ]
    metrics.put_samples(["a", "b", "c"], "p", {"r": rows})  # 7 bytes over 3 keys: 3 + 2 + 2
    assert metrics.bytes_outstanding_by_partition() == {"p": 10}
    metrics.pop(["a"], "p")
    assert metrics.stats.bytes_outstanding == 10 - 1 - 3


def test_concurrent_operations_keep_consistent_totals(client):
    events = []
    lock = threading.Lock()

    def sink(event):
        with lock:
            events.append(event)

    metrics = MetricsDataPlaneClient(client, on_event=sink)
    n_threads, rounds = 6, 40
    errors = []

    def worker(t: int):
        try:
            for r in range(rounds):
                keys = [f"t{t}-r{r}-{i}" for i in range(2)]
                metrics.put_samples(keys, "p", _x(2))
                metrics.get_samples(keys, "p", ["x"])
                if r % 2:
                    metrics.pop(keys, "p")
        except Exception as exc:  # pragma: no cover - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert errors == [] and not any(th.is_alive() for th in threads)
    kept = n_threads * rounds // 2 * 2  # keys of the even rounds
    snap = metrics.snapshot()
    assert snap["bytes_outstanding"] == kept * 16 == sum(metrics.bytes_outstanding_by_partition().values())
    assert snap["n_keys_outstanding"] == kept == len(client.list_sample_ids("p"))
    assert snap["ops_by_op"] == {
        "put": n_threads * rounds,
        "get": n_threads * rounds,
        "pop": n_threads * rounds // 2,
    }
    assert len(events) == snap["total_ops"]
    assert snap["peak_bytes_outstanding"] >= snap["bytes_outstanding"]


# ---------------------------------------------------------------------------------------------- wiring
def test_factory_wraps_when_observability_is_enabled(events):
    client = build_data_plane_client(
        {"impl": "memory", "observability": {"enabled": True, "callback": events.append}}
    )
    try:
        assert isinstance(client, MetricsDataPlaneClient)
        client.put_samples(["a"], "p", _x(1))
        assert [(e["op"], e["n_bytes"]) for e in events] == [("put", 16)]
        assert client.prometheus is None
    finally:
        client.close()
    assert events[-1]["op"] == "close"


def test_close_hooks_run_once_after_the_inner_client_closed(client, events):
    metrics = MetricsDataPlaneClient(client, on_event=events.append)
    seen = []
    metrics.add_close_hook(lambda: seen.append(("hook", [e["op"] for e in events])))
    metrics.close()
    metrics.close()
    assert seen == [("hook", ["close"])]


def test_log_events_logs_each_event_at_debug(client, caplog):
    metrics = wrap_with_observability(client, ObservabilityConfig(enabled=True, log_events=True))
    with caplog.at_level(logging.DEBUG, logger="kvplane._observability"):
        metrics.ping()
    records = [r for r in caplog.records if r.name == "kvplane._observability"]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG
    assert "'op': 'ping'" in records[0].getMessage()


def _fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_prometheus_port_serves_until_the_client_closes(client):
    metrics = wrap_with_observability(client, ObservabilityConfig(enabled=True, prometheus_port=0))
    exporter = metrics.prometheus
    assert exporter is not None and exporter.port and exporter.port > 0
    metrics.put_samples(["a"], "p", _x(1))
    assert 'kvplane_ops_total{op="put",status="ok"} 1.0' in _fetch(exporter.port)
    metrics.close()
    assert metrics.prometheus is None
    with pytest.raises(urllib.error.URLError):
        _fetch(exporter.port)


# ---------------------------------------------------------------------------------------------- prometheus
def _samples(exporter: PrometheusExporter) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(exporter.exposition()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_contains_every_documented_metric():
    documented = set(re.findall(r"``(kvplane_[a-z_]+)``", kvplane._prometheus.__doc__))
    assert {"kvplane_op_duration_seconds", "kvplane_ops_total", "kvplane_bytes_outstanding"} <= documented
    exporter = PrometheusExporter()
    metrics = MetricsDataPlaneClient(MemoryDataPlaneClient())
    exporter.track(metrics)
    metrics.put_samples(["a"], "p", _x(1))
    exporter.set_inventory({"p": 1}, {"p": 0})
    text = exporter.exposition()
    missing = [name for name in documented if not re.search(rf"^# TYPE {name}(_total)? ", text, re.M)]
    assert missing == []
    assert all(
        name.endswith("_total") for name in documented if re.search(rf"^# TYPE {name} counter", text, re.M)
    )
    for line in text.splitlines():  # gauges and histograms never carry _total
        if line.startswith("# TYPE") and not line.endswith("counter"):
            assert "_total" not in line, line


def test_exposition_values_move_with_operations():
    exporter = PrometheusExporter()
    metrics = MetricsDataPlaneClient(MemoryDataPlaneClient())
    exporter.track(metrics)
    metrics.put_samples(["a", "b"], "p", _x(2))
    metrics.get_samples(["a"], "p", ["x"])
    with pytest.raises(DataPlaneKeyError):
        metrics.get_samples(["nope"], "p", ["x"])
    values = _samples(exporter)
    assert values[("kvplane_ops_total", (("op", "put"), ("status", "ok")))] == 1
    assert values[("kvplane_ops_total", (("op", "get"), ("status", "error")))] == 1
    assert values[("kvplane_bytes_total", (("op", "put"),))] == 32
    assert values[("kvplane_bytes_total", (("op", "get"),))] == 16
    assert values[("kvplane_keys_total", (("op", "put"),))] == 2
    assert values[("kvplane_op_duration_seconds_count", (("op", "get"), ("status", "ok")))] == 1
    assert values[("kvplane_bytes_outstanding", ())] == 32
    assert values[("kvplane_keys_outstanding", ())] == 2
    metrics.clear_samples(None, "p")
    values = _samples(exporter)
    assert values[("kvplane_bytes_outstanding", ())] == 0
    assert values[("kvplane_bytes_outstanding_peak", ())] == 32
    assert values[("kvplane_ops_total", (("op", "clear"), ("status", "ok")))] == 1
    metrics.close()


def test_exporters_have_private_registries():
    first, second = PrometheusExporter(), PrometheusExporter()
    metrics = MetricsDataPlaneClient(MemoryDataPlaneClient())
    first.track(metrics)
    metrics.ping()
    assert 'op="ping"' in first.exposition() and 'op="ping"' not in second.exposition()


def test_missing_prometheus_client_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'kvplane\[metrics\]'"):
        PrometheusExporter()
