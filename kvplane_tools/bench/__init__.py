"""``kvplane bench``: benchmark suites that report ratios measured side by side in one run.

:data:`SUITES` is the registry: suite name → module with ``run(*, quick: bool = False) -> dict``
(a JSON-serialisable report), imported only when the suite runs. :mod:`.runner` runs them for the
command; :mod:`.stats` holds the shared timing helpers; :mod:`.raw_tq` the raw-TransferQueue
baselines. Speed targets live here, never as timed assertions in the test suite.

Examples:
    >>> from kvplane_tools.bench import SUITES
    >>> sorted(SUITES)
    ['balance', 'checkpoint', 'kv', 'loader']
"""

__all__ = ["SUITES"]

#: Suite name → the module whose ``run(*, quick=False)`` measures it.
SUITES: dict[str, str] = {
    "kv": "kvplane_tools.bench.kv",
    "balance": "kvplane_tools.bench.balance",
    "loader": "kvplane_tools.bench.loader",
    "checkpoint": "kvplane_tools.bench.checkpoint",
}
