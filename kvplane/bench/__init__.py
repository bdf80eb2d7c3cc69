"""``kvplane bench``: benchmark suites that report ratios measured side by side in one run.

Each suite module exposes ``run(*, quick: bool = False) -> dict`` returning a JSON-serialisable
report; :mod:`kvplane.bench.stats` holds the shared timing helpers. Speed targets live here, never
as timed assertions in the test suite.
"""
