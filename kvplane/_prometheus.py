"""Optional Prometheus export of :class:`~kvplane._observability.MetricsDataPlaneClient` events.

Needs the ``metrics`` extra (``pip install 'kvplane[metrics]'``); ``prometheus_client`` is imported
only when an exporter is built. Each exporter owns a private ``CollectorRegistry`` (nothing goes to
the global one), so several clients or tests in one process never collide. The metrics (labels
``op``/``status``/``partition``, never per-key ones): ``kvplane_op_duration_seconds``,
``kvplane_ops_total``, ``kvplane_bytes_total``, ``kvplane_keys_total``, ``kvplane_bytes_outstanding``,
``kvplane_bytes_outstanding_peak``, ``kvplane_keys_outstanding``, ``kvplane_partition_keys``,
``kvplane_partition_depth``; the outstanding-bytes gauges are read from the tracked client at scrape time.

Design: docs/internals.md#kvplane_prometheuspy--the-exported-metrics

Examples:
    >>> import torch
    >>> from kvplane import build_data_plane_client
    >>> from kvplane._observability import MetricsDataPlaneClient
    >>> from kvplane._prometheus import PrometheusExporter
    >>> client = MetricsDataPlaneClient(build_data_plane_client({"impl": "embedded"}))
    >>> exporter = PrometheusExporter()
    >>> exporter.track(client)
    >>> _ = client.put_samples(["a", "b"], "p", {"x": torch.zeros(2, 8)})
    >>> text = exporter.exposition()
    >>> 'kvplane_ops_total{op="put",status="ok"} 1.0' in text, "kvplane_bytes_outstanding 64.0" in text
    (True, True)
    >>> client.close()
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from kvplane._errors import DataPlaneBadRequest

if TYPE_CHECKING:
    from kvplane._observability import DataPlaneEvent, MetricsDataPlaneClient

__all__ = ["DURATION_BUCKETS_S", "PrometheusExporter", "import_prometheus_client"]

logger = logging.getLogger(__name__)

#: Histogram buckets of ``kvplane_op_duration_seconds``: 100 µs (an in-memory metadata call) to one
#: minute (the default claim deadline).
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def import_prometheus_client() -> ModuleType:
    """Import ``prometheus_client``, or explain how to install it.

    Raises:
        ModuleNotFoundError: It is not installed (the message says ``pip install 'kvplane[metrics]'``).
    """
    try:
        return importlib.import_module("prometheus_client")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "Prometheus export needs prometheus-client: pip install 'kvplane[metrics]'", name=exc.name
        ) from exc


class PrometheusExporter:
    """Prometheus metrics for one or more :class:`~kvplane._observability.MetricsDataPlaneClient`.

    Args:
        buckets: Histogram buckets in seconds for ``kvplane_op_duration_seconds``.

    Attributes:
        registry: The private ``prometheus_client.CollectorRegistry``.
        port: The port being served, or ``None`` before :meth:`serve`.

    Raises:
        ModuleNotFoundError: ``prometheus-client`` is not installed.
    """

    def __init__(self, *, buckets: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        prom = import_prometheus_client()
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.port: int | None = None
        self._server: Any = None
        self._clients: list[MetricsDataPlaneClient] = []
        reg = self.registry
        self._duration = prom.Histogram(
            "kvplane_op_duration_seconds",
            "Wall time of kvplane data plane operations.",
            ["op", "status"],
            buckets=buckets,
            registry=reg,
        )
        self._ops = prom.Counter(
            "kvplane_ops", "kvplane data plane operations.", ["op", "status"], registry=reg
        )
        self._bytes = prom.Counter(
            "kvplane_bytes", "Tensor payload bytes moved by successful operations.", ["op"], registry=reg
        )
        self._keys = prom.Counter(
            "kvplane_keys", "Keys named by successful operations.", ["op"], registry=reg
        )
        outstanding = prom.Gauge(
            "kvplane_bytes_outstanding", "Bytes put and not yet cleared (this process).", registry=reg
        )
        peak = prom.Gauge(
            "kvplane_bytes_outstanding_peak", "High-water mark of outstanding bytes.", registry=reg
        )
        keys_outstanding = prom.Gauge(
            "kvplane_keys_outstanding", "Keys holding outstanding bytes (this process).", registry=reg
        )
        outstanding.set_function(lambda: self._sum_stat("bytes_outstanding"))
        peak.set_function(lambda: self._sum_stat("peak_bytes_outstanding"))
        keys_outstanding.set_function(lambda: self._sum_stat("n_keys_outstanding"))
        self._partition_keys = prom.Gauge(
            "kvplane_partition_keys", "Keys stored per partition.", ["partition"], registry=reg
        )
        self._partition_depth = prom.Gauge(
            "kvplane_partition_depth",
            "Committed, complete groups per partition.",
            ["partition"],
            registry=reg,
        )
        self._generate_latest = prom.generate_latest
        self._start_http_server = prom.start_http_server

    def _sum_stat(self, name: str) -> float:
        return float(sum(client.snapshot()[name] for client in self._clients))

    def track(self, client: MetricsDataPlaneClient) -> None:
        """Export ``client``'s events and outstanding bytes; the exporter is closed with the client."""
        self._clients.append(client)
        client.add_sink(self.observe)
        if client.prometheus is None:  # the first exporter tracking a client is the one closed with it
            client.prometheus = self
            client.add_close_hook(lambda: self._closed_with(client))

    def _closed_with(self, client: MetricsDataPlaneClient) -> None:
        client.prometheus = None
        self.close()

    def observe(self, event: DataPlaneEvent) -> None:
        """Record one event (the sink :meth:`track` installs)."""
        op, status = event["op"], event["status"]
        self._duration.labels(op, status).observe(event["wall_ms"] / 1000.0)
        self._ops.labels(op, status).inc()
        if status == "ok":
            self._bytes.labels(op).inc(event["n_bytes"])
            self._keys.labels(op).inc(event["n_keys"])

    def set_inventory(
        self, keys_by_partition: Mapping[str, int], depth_by_partition: Mapping[str, int]
    ) -> None:
        """Set the per-partition inventory gauges (replacing any partitions set before)."""
        self._partition_keys.clear()
        self._partition_depth.clear()
        for partition, n in keys_by_partition.items():
            self._partition_keys.labels(partition).set(n)
        for partition, n in depth_by_partition.items():
            self._partition_depth.labels(partition).set(n)

    def exposition(self) -> str:
        """The metrics in the Prometheus text format (what the HTTP endpoint serves)."""
        return self._generate_latest(self.registry).decode()

    def serve(self, port: int = 0, *, addr: str = "0.0.0.0") -> int:
        """Serve the metrics over HTTP on ``port`` (0 picks a free one) in a daemon thread.

        ``addr`` defaults to every interface, as ``prometheus_client`` does, so a Prometheus server on
        another host can scrape; pass ``"127.0.0.1"`` to keep it local.

        Returns:
            The port actually bound (also :attr:`port`).
        """
        if self._server is not None:
            raise DataPlaneBadRequest(f"this PrometheusExporter already serves on port {self.port}")
        server, _thread = self._start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        self.port = int(server.server_port)
        return self.port

    def close(self) -> None:
        """Stop serving (if serving). Idempotent; the exposition stays readable."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            logger.debug("kvplane Prometheus exporter on port %s stopped", self.port)
