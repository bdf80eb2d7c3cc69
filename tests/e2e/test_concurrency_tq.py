"""The concurrency suite (tests/unit/test_concurrency.py) on TransferQueue, SimpleStorage and MooncakeStore.

Unchanged tests, many threads of one process on the session's client: claims exactly once per task,
tag merges (TransferQueue loses concurrent updates: the suite asserts only what holds everywhere,
because ``get_capabilities().supports_atomic_batch_put`` is False here), put/clear races, and groups
read whole or not at all while a buffer evicts. Across processes: tests/e2e/test_recovery_e2e.py.
"""

from tests.unit.test_concurrency import *  # noqa: F401,F403
