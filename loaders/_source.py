"""Where a loader gets its data plane client: a client object, or a config to build one per process.

- A :class:`~kvplane.DataPlaneClient` object is used as is, in the process that holds it. It cannot
  cross into DataLoader worker processes, so it requires ``num_workers=0`` (DP ranks may still be
  threads sharing it, which is how the embedded memory backend runs several ranks).
- A config (dict, YAML path or :class:`~kvplane.DataPlaneConfig`) is resolved lazily, once per
  process: ``impl: transfer_queue`` attaches to the running deployment with
  ``build_data_plane_client(cfg, bootstrap=False)`` (fork/spawn-safe: nothing is built before
  ``__iter__`` runs in the worker); ``impl: memory`` means the process-default client of
  :func:`kvplane.init` (the store the ``kv_*`` facade writes to), since a freshly built embedded store
  would be empty.

The embedded memory backend lives in one process, so a memory source with ``num_workers >= 1`` is
refused with :class:`~kvplane.DataPlaneBadRequest` instead of silently reading an empty store.

Examples:
    >>> import kvplane
    >>> from loaders._source import ClientSource
    >>> src = ClientSource({"impl": "memory", "claim_meta_poll_interval_s": 0.005})
    >>> src.get() is kvplane.get_client(), src.poll_interval_s
    (True, 0.005)
    >>> src.check_workers(2)
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: num_workers=2 needs a backend that DataLoader worker processes ...
    >>> kvplane.close()
"""

from __future__ import annotations

import os
import threading
from typing import Any

import kvplane
from kvplane import DataPlaneBadRequest, DataPlaneClient, DataPlaneConfig

__all__ = ["ClientSource", "DEFAULT_POLL_INTERVAL_S"]

#: Poll interval of followers waiting for a plan when the source is a client object (a config's
#: ``claim_meta_poll_interval_s`` is used otherwise).
DEFAULT_POLL_INTERVAL_S = 0.01


class ClientSource:
    """A client object or a config; :meth:`get` returns this process's client.

    Args:
        source: A ``DataPlaneClient``, or anything :meth:`kvplane.DataPlaneConfig.load` accepts.

    Raises:
        DataPlaneBadRequest: ``source`` is neither a client nor a valid config.
    """

    def __init__(self, source: Any) -> None:
        self._client: DataPlaneClient | None = None
        self._config: DataPlaneConfig | None = None
        if isinstance(source, DataPlaneClient):
            self._client = source
        else:
            self._config = DataPlaneConfig.load(source)
        self._built: DataPlaneClient | None = None
        self._built_pid: int | None = None
        self._lock = threading.Lock()

    @property
    def poll_interval_s(self) -> float:
        """The config's ``claim_meta_poll_interval_s``, or :data:`DEFAULT_POLL_INTERVAL_S`."""
        return (
            self._config.claim_meta_poll_interval_s if self._config is not None else DEFAULT_POLL_INTERVAL_S
        )

    def check_workers(self, num_workers: int) -> None:
        """Refuse ``num_workers >= 1`` unless every worker process can build a client that reaches the data.

        Raises:
            DataPlaneBadRequest: A client object, or the embedded memory backend, with workers.
        """
        if num_workers < 1:
            return
        if self._config is None or self._config.impl == "embedded":
            raise DataPlaneBadRequest(
                f"num_workers={num_workers} needs a backend that DataLoader worker processes can reach: "
                "the embedded memory backend lives in one process (a worker would see an empty store), "
                "and a client object cannot be sent to a worker. Use num_workers=0 (DP ranks may be "
                "threads sharing one memory client), or pass a TransferQueue config so that each worker "
                "attaches its own client."
            )

    def get(self) -> DataPlaneClient:
        """This process's client (built on first use after a fork or spawn)."""
        if self._client is not None:
            return self._client
        assert self._config is not None
        with self._lock:
            if self._built is None or self._built_pid != os.getpid():
                if self._config.impl == "embedded":
                    self._built = kvplane.init(self._config)
                else:
                    self._built = kvplane.build_data_plane_client(self._config, bootstrap=False)
                self._built_pid = os.getpid()
            return self._built

    def __getstate__(self) -> dict[str, Any]:
        if self._client is not None:
            raise DataPlaneBadRequest(
                "a loader built on a client object cannot be sent to another process; pass a config"
            )
        return {"_config": self._config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_config"])  # type: ignore[misc]
