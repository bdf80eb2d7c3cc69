"""``build_data_plane_client``: turn a config into a ready client.

Adapters are imported lazily, so the memory backend never imports Ray or TransferQueue.

Examples:
    >>> from kvplane import build_data_plane_client
    >>> client = build_data_plane_client({"impl": "memory"})
    >>> type(client).__name__
    'MemoryDataPlaneClient'
    >>> client.close()
"""

from __future__ import annotations

from typing import Any

from kvplane.client import DataPlaneClient
from kvplane.config import DataPlaneConfig, check_buildable

__all__ = ["build_data_plane_client"]


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
        from kvplane.observability import wrap_with_observability

        client = wrap_with_observability(client, config.observability)
    return client
