"""The shared DataPlaneClient contract suite, run on TransferQueue (SimpleStorage and MooncakeStore).

The tests are tests/unit/test_contract.py's, unchanged; tests/e2e/conftest.py provides ``client``
(the session's TransferQueue client, once per backend) and the root conftest ``pid``.
"""

from tests.unit.test_contract import *  # noqa: F401,F403
