"""The TransferQueue backend (``impl: transfer_queue``): the only package that imports ``transfer_queue``.

Modules: :mod:`.client` (the contract), :mod:`.deployment` (Ray and TransferQueue lifecycle),
:mod:`.control` (shared control records), :mod:`.calls` (deadlines and error translation),
:mod:`.wire` (shapes on the way in and out).

TransferQueue reads ``TQ_NUM_THREADS`` when it is imported and warns on every put and get when the
value (default 8) exceeds the physical cores; kvplane defaults it to the core count (an explicit
setting wins). A local Ray started by kvplane passes the environment on to TransferQueue's actors.
"""

import os

import psutil

os.environ.setdefault("TQ_NUM_THREADS", str(psutil.cpu_count(logical=False) or 1))

from ._client import TransferQueueDataPlaneClient  # noqa: E402

__all__ = ["TransferQueueDataPlaneClient"]
