"""The kvplane error tree; backend exceptions are translated into it, the cause chained::

    DataPlaneError (a RuntimeError)
    ├── DataPlaneUnavailable        backend gone, closed client, deployment not reachable
    ├── DataPlaneTimeout            a deadline passed (also a TimeoutError)
    ├── DataPlaneReadError          a read failed for a reason that is not the caller's
    ├── DataPlaneWriteError         a write failed for a reason that is not the caller's
    ├── DataPlaneClearError         a clear / pop / evict failed
    ├── DataPlaneNotReady           data is not (yet) produced where the call needs it
    └── DataPlaneBadRequest         bad input (also a ValueError)
        ├── DataPlaneKeyError       missing partition, key or field (also a KeyError)
        │   └── StorageKeyNotFoundError   a read raced a clear of its keys (TransferQueue's name)
        └── DataPlaneCheckpointError      unusable checkpoint, the file named
            └── CheckpointNotFoundError   missing checkpoint (also a FileNotFoundError)

Examples:
    >>> from kvplane import DataPlaneKeyError, DataPlaneBadRequest
    >>> err = DataPlaneKeyError("key(s) 'k9' not found in partition 'train'")
    >>> isinstance(err, KeyError) and isinstance(err, ValueError) and isinstance(err, DataPlaneBadRequest)
    True
    >>> str(err)
    "key(s) 'k9' not found in partition 'train'"
"""

from __future__ import annotations

__all__ = [
    "CheckpointNotFoundError",
    "DataPlaneBadRequest",
    "DataPlaneCheckpointError",
    "DataPlaneClearError",
    "DataPlaneError",
    "DataPlaneKeyError",
    "DataPlaneNotReady",
    "DataPlaneReadError",
    "DataPlaneTimeout",
    "DataPlaneUnavailable",
    "DataPlaneWriteError",
    "StorageKeyNotFoundError",
]


class DataPlaneError(RuntimeError):
    """Root of every error kvplane raises."""


class DataPlaneUnavailable(DataPlaneError):
    """The backend cannot be reached: closed client, dead actor, lost deployment."""


class DataPlaneTimeout(DataPlaneError, TimeoutError):
    """A call did not finish before its deadline."""


class DataPlaneReadError(DataPlaneError):
    """A read or metadata listing failed inside the backend."""


class DataPlaneWriteError(DataPlaneError):
    """A write failed inside the backend (after validation passed)."""


class DataPlaneClearError(DataPlaneError):
    """A clear, pop or evict failed inside the backend."""


class DataPlaneNotReady(DataPlaneError):
    """The data a call needs has not been produced."""


class DataPlaneBadRequest(DataPlaneError, ValueError):
    """The caller's input is invalid; nothing was stored or changed."""


class DataPlaneKeyError(DataPlaneBadRequest, KeyError):
    """A partition, key or field that the call names does not exist."""

    def __str__(self) -> str:
        # KeyError quotes its argument (repr); a message reads better plain.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class StorageKeyNotFoundError(DataPlaneKeyError):
    """A read found its keys listed, then gone: a clear (or a rewrite) raced it.

    TransferQueue 0.1.11 exports an error of this name for the same race; code that tolerates the
    race catches it by name, and ``except DataPlaneKeyError`` / ``except KeyError`` catch it too. A
    key that was never there (or was cleared before the read began) is a plain
    :class:`DataPlaneKeyError`.

    Examples:
        >>> from kvplane import StorageKeyNotFoundError
        >>> try:
        ...     raise StorageKeyNotFoundError("key(s) ['k0'] of partition 'p' were cleared while being read")
        ... except KeyError as err:
        ...     print(err)
        key(s) ['k0'] of partition 'p' were cleared while being read
    """


class DataPlaneCheckpointError(DataPlaneBadRequest):
    """A checkpoint cannot be used: corrupted, truncated, of another format version, or not one of
    this store's kind. The message names the file; nothing was loaded."""


class CheckpointNotFoundError(DataPlaneCheckpointError, FileNotFoundError):
    """The checkpoint directory, or a file it must hold (``metadata.json``), does not exist.

    Also a ``FileNotFoundError``, which TransferQueue's ``load_checkpoint`` raises in this case.
    """
