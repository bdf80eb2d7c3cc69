"""Configs for tests and benchmarks on one machine.

:func:`transfer_queue_config` is the TransferQueue deployment kvplane's own end-to-end tests and
benchmarks start: one storage unit (the fastest layout on a 2-core box), unbounded storage, claims
polled every 10 ms, and MooncakeStore segments sized for a test host. Tests and benchmarks override
what they need (a benchmark's deadlines and segments are larger).

Examples:
    >>> from kvplane.testing import transfer_queue_config
    >>> cfg = transfer_queue_config("simple")
    >>> cfg["impl"], cfg["num_storage_units"], cfg["request_timeout_s"]
    ('transfer_queue', 1, 60.0)
    >>> transfer_queue_config("mooncake_cpu", request_timeout_s=600.0)["request_timeout_s"]
    600.0
    >>> transfer_queue_config("simple", storage_capacty=3)
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: data plane config: 'storage_capacty' is an unknown key ...
"""

from __future__ import annotations

from typing import Any

from kvplane._config import DataPlaneConfig

__all__ = ["transfer_queue_config"]


def transfer_queue_config(backend: str = "simple", **overrides: Any) -> dict[str, Any]:
    """A TransferQueue deployment config (a new dict) for ``backend``, with ``overrides`` applied.

    Args:
        backend: ``simple`` (SimpleStorage), ``mooncake_cpu`` (MooncakeStore over TCP) or ``columnar``
            (one Ray object per field per put).
        overrides: Config keys to set on top (checked like any config).

    Raises:
        DataPlaneBadRequest: ``backend`` or an override is not a valid config (the message names it).
    """
    cfg: dict[str, Any] = {
        "impl": "transfer_queue",
        "backend": backend,
        "storage_capacity": None,
        "num_storage_units": 1,
        "claim_meta_poll_interval_s": 0.01,
        "request_timeout_s": 60.0,
        "bootstrap_timeout_s": 120.0,
    }
    if backend == "mooncake_cpu":
        cfg.update(global_segment_size=1 << 30, local_buffer_size=256 << 20)
    cfg.update(overrides)
    DataPlaneConfig.load(cfg)
    return cfg
