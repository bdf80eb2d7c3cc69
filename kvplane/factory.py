"""``build_data_plane_client``: turn a config into a ready client, observability included.

Adapters are imported lazily, so the memory backend never imports Ray or TransferQueue. The
observability wiring lives here too (:func:`wrap_with_observability`): the factory sits above both
the middleware (:mod:`kvplane.observability`) and its exporter (:mod:`kvplane.prometheus`), so neither
of those imports the other's wiring.

Examples:
    >>> from kvplane import build_data_plane_client
    >>> client = build_data_plane_client({"impl": "memory"})
    >>> type(client).__name__
    'MemoryDataPlaneClient'
    >>> client.close()
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kvplane.client import DataPlaneClient
from kvplane.config import DataPlaneConfig, ObservabilityConfig, check_buildable

if TYPE_CHECKING:
    from kvplane.observability import MetricsDataPlaneClient

__all__ = ["build_data_plane_client", "wrap_with_observability"]

logger = logging.getLogger(__name__)


def build_data_plane_client(
    cfg: DataPlaneConfig | dict[str, Any] | str | None, *, bootstrap: bool = True
) -> DataPlaneClient:
    """Build the client ``cfg`` describes (see :class:`~kvplane.DataPlaneConfig`).

    Args:
        cfg: A config, a mapping, a YAML path, or ``None`` for the embedded memory backend.
        bootstrap: For TransferQueue: start the deployment (driver) when True; attach to a running
            one (worker) when False. Only the bootstrapping process tears it down on ``close()``.

    Raises:
        DataPlaneBadRequest: The config is disabled ("disabled" in the message; checked before
            anything else), names an unknown impl ("unknown data_plane impl: ..."), or is invalid
            (the message names the key).
    """
    check_buildable(cfg)  # 'enabled' first, then 'impl', worded as NeMo-RL's factory
    config = DataPlaneConfig.load(cfg)
    client: DataPlaneClient
    if config.impl == "memory":
        from kvplane.adapters.memory import MemoryDataPlaneClient

        client = MemoryDataPlaneClient(seq_len_tag=config.seq_len_tag)
    else:
        from kvplane.adapters.transfer_queue import TransferQueueDataPlaneClient

        client = TransferQueueDataPlaneClient(config, bootstrap=bootstrap)
    if config.observability.enabled:
        client = wrap_with_observability(client, config.observability)
    return client


def wrap_with_observability(client: DataPlaneClient, obs_cfg: ObservabilityConfig) -> MetricsDataPlaneClient:
    """Wrap ``client`` as ``obs_cfg`` says: callback, DEBUG event logging, Prometheus exporter.

    :func:`build_data_plane_client` calls this when ``observability.enabled`` is true. With
    ``prometheus_port`` set, the exporter serves on that port (0 picks a free one; read it from
    ``wrapped.prometheus.port``) and stops when the client is closed.

    Raises:
        ModuleNotFoundError: ``prometheus_port`` is set but ``prometheus-client`` is not installed.

    Examples:
        >>> from kvplane.config import ObservabilityConfig
        >>> seen = []
        >>> inner = build_data_plane_client(None)
        >>> client = wrap_with_observability(inner, ObservabilityConfig(callback=seen.append))
        >>> client.ping(); seen[0]["op"], seen[0]["status"]
        ('ping', 'ok')
        >>> client.close()
    """
    from kvplane.observability import MetricsDataPlaneClient, log_event

    wrapped = MetricsDataPlaneClient(client, on_event=obs_cfg.callback)
    if obs_cfg.log_events:
        wrapped.add_sink(log_event)
    if obs_cfg.prometheus_port is not None:
        from kvplane.prometheus import PrometheusExporter

        exporter = PrometheusExporter()
        exporter.track(wrapped)
        port = exporter.serve(obs_cfg.prometheus_port)
        logger.info("kvplane Prometheus metrics on port %d", port)
    return wrapped
