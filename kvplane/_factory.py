"""``build_data_plane_client``: turn a config into a ready client, observability included.

Adapters are imported lazily, so the embedded backend never imports Ray or TransferQueue; a backend
whose optional packages are missing fails up front with :class:`~kvplane.DataPlaneUnavailable` naming
the package and the ``pip install 'kvplane[...]'`` line, before anything starts. The
observability wiring lives here too (:func:`wrap_with_observability`): the factory sits above both
the middleware (:mod:`kvplane._observability`) and its exporter (:mod:`kvplane._prometheus`), so neither
of those imports the other's wiring.

Examples:
    >>> from kvplane import build_data_plane_client
    >>> client = build_data_plane_client({"impl": "embedded"})
    >>> type(client).__name__
    'MemoryDataPlaneClient'
    >>> client.close()
    >>> client = build_data_plane_client("embedded")   # a packaged example, by name
    >>> client.close()
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kvplane._client import DataPlaneClient
from kvplane._config import DataPlaneConfig, ObservabilityConfig, check_buildable
from kvplane._deps import missing, require

if TYPE_CHECKING:
    from kvplane._observability import MetricsDataPlaneClient

__all__ = ["build_data_plane_client", "wrap_with_observability"]

logger = logging.getLogger(__name__)


def build_data_plane_client(
    cfg: DataPlaneConfig | dict[str, Any] | str, *, bootstrap: bool = True
) -> DataPlaneClient:
    """Build the client ``cfg`` describes (see :class:`~kvplane.DataPlaneConfig`).

    Args:
        cfg: A config, a mapping, a YAML path, or an example's name (``"embedded"``,
            ``"transfer_queue"``, see :mod:`kvplane.examples`). ``None`` is refused, as NeMo-RL's
            factory refuses it (``kvplane.init()`` is the way to the embedded default).
        bootstrap: For TransferQueue: start the deployment (driver) when True; attach to a running
            one (worker) when False. Only the bootstrapping process tears it down on ``close()``.

    Raises:
        DataPlaneBadRequest: ``cfg`` is ``None``, the config is disabled ("disabled" in the message; checked before
            anything else), names an unknown impl ("unknown data_plane impl: ..."), or is invalid
            (the message names the key).
        DataPlaneUnavailable: An optional package the config needs is not installed (the message
            names it and the ``pip install`` line; checked before anything is started).
    """
    check_buildable(cfg)  # 'enabled' first, then 'impl', worded as NeMo-RL's factory
    config = DataPlaneConfig.load(cfg)
    _require_packages(config)
    client: DataPlaneClient
    if config.impl == "transfer_queue":
        try:
            from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient
        except ModuleNotFoundError as exc:  # a dependency of TransferQueue's own (zmq, psutil, ...)
            raise missing(exc.name or "transfer_queue", "impl: transfer_queue", exc) from exc
        client = TransferQueueDataPlaneClient(config, bootstrap=bootstrap)
    else:
        from kvplane.adapters.memory import MemoryDataPlaneClient

        client = MemoryDataPlaneClient(seq_len_tag=config.seq_len_tag)
    if config.observability.enabled:
        client = wrap_with_observability(client, config.observability)
    return client


def _require_packages(config: DataPlaneConfig) -> None:
    """Fail before anything starts when a package ``config`` needs is not installed."""
    if config.impl == "transfer_queue":
        require("transfer_queue", "ray", purpose="impl: transfer_queue")
        if config.backend == "mooncake_cpu":
            require("mooncake", purpose="backend: mooncake_cpu")
    if config.observability.enabled and config.observability.prometheus_port is not None:
        require("prometheus_client", purpose="observability.prometheus_port")


def wrap_with_observability(client: DataPlaneClient, obs_cfg: ObservabilityConfig) -> MetricsDataPlaneClient:
    """Wrap ``client`` as ``obs_cfg`` says: callback, DEBUG event logging, Prometheus exporter.

    :func:`build_data_plane_client` calls this when ``observability.enabled`` is true. With
    ``prometheus_port`` set, the exporter serves on that port (0 picks a free one; read it from
    ``wrapped.prometheus.port``) and stops when the client is closed.

    Raises:
        DataPlaneUnavailable: ``prometheus_port`` is set but ``prometheus-client`` is not installed
            (the message says ``pip install 'kvplane[metrics]'``).

    Examples:
        >>> from kvplane._config import ObservabilityConfig
        >>> seen = []
        >>> inner = build_data_plane_client({"impl": "embedded"})
        >>> client = wrap_with_observability(inner, ObservabilityConfig(callback=seen.append))
        >>> client.ping(); seen[0]["op"], seen[0]["status"]
        ('ping', 'ok')
        >>> client.close()
    """
    from kvplane._observability import MetricsDataPlaneClient, log_event

    wrapped = MetricsDataPlaneClient(client, on_event=obs_cfg.callback)
    if obs_cfg.log_events:
        wrapped.add_sink(log_event)
    if obs_cfg.prometheus_port is not None:
        require("prometheus_client", purpose="observability.prometheus_port")
        from kvplane._prometheus import PrometheusExporter

        exporter = PrometheusExporter()
        exporter.track(wrapped)
        port = exporter.serve(obs_cfg.prometheus_port)
        logger.info("kvplane Prometheus metrics on port %d", port)
    return wrapped
