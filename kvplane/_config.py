"""``DataPlaneConfig``: which backend to build and how, validated when it is loaded.

A config comes from a dict, a YAML file, an example's name, or ``None`` (the embedded backend). Every
error names the offending key. ``impl: embedded`` (the default; ``memory`` is an alias) needs nothing
else; ``impl: transfer_queue`` needs the TransferQueue keys, and ``backend: mooncake_cpu`` also the
Mooncake sizes. A string that is not an existing file, with no path separator and no
``.yaml``/``.yml`` suffix, names a packaged example (:func:`resolve_config_path`).

NeMo-RL's keys (``controller_address``, ``ack_timeout_ms``, the ``simple:``/``mooncake_cpu:`` blocks,
...) are read as kvplane's; a key given both ways must agree.

Design: docs/internals.md#kvplane_configpy--configuration-keys

Examples:
    >>> from kvplane import DataPlaneConfig
    >>> DataPlaneConfig.load(None).impl, DataPlaneConfig.load({"impl": "memory"}).impl
    ('embedded', 'embedded')
    >>> DataPlaneConfig.load("transfer_queue").backend      # the packaged example, from any directory
    'simple'
    >>> cfg = DataPlaneConfig.load({"impl": "transfer_queue", "backend": "simple", "storage_capacity": None,
    ...                             "num_storage_units": 1, "claim_meta_poll_interval_s": 0.01})
    >>> cfg.backend, cfg.num_storage_units
    ('simple', 1)
    >>> nemo_rl = {"enabled": True, "impl": "transfer_queue", "backend": "simple", "claim_meta_poll_interval_s": 0.05,
    ...            "simple": {"num_storage_units": 2}, "controller_address": "auto", "ack_timeout_ms": 30000}
    >>> cfg = DataPlaneConfig.load(nemo_rl)
    >>> cfg.storage_capacity, cfg.num_storage_units, cfg.ray_address, cfg.request_timeout_s
    (1000000, 2, 'auto', 30.0)
    >>> DataPlaneConfig.load({"impl": "embedded", "storage_capacty": 3})
    Traceback (most recent call last):
    ...
    kvplane._errors.DataPlaneBadRequest: data plane config: 'storage_capacty' is an unknown key ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kvplane._errors import DataPlaneBadRequest
from kvplane.examples import names as example_names
from kvplane.examples import path as example_path

__all__ = ["DEFAULT_IMPL", "DataPlaneConfig", "ObservabilityConfig", "check_buildable", "resolve_config_path"]

#: The default backend's one name (a store inside this process).
DEFAULT_IMPL = "embedded"
_IMPLS = (DEFAULT_IMPL, "transfer_queue")
#: Accepted spellings of an impl and the name they mean (``memory``: kvplane's earlier name).
_IMPL_ALIASES = {"memory": DEFAULT_IMPL}
_BACKENDS = ("simple", "mooncake_cpu", "columnar")
_TQ_REQUIRED = ("backend", "storage_capacity", "num_storage_units", "claim_meta_poll_interval_s")
_MOONCAKE_REQUIRED = ("global_segment_size", "local_buffer_size")


def _bad(key: str, why: str) -> DataPlaneBadRequest:
    return DataPlaneBadRequest(f"data plane config: {key!r} {why}")


@dataclass(frozen=True)
class ObservabilityConfig:
    """Observability settings.

    Attributes:
        enabled: Wrap the client in ``MetricsDataPlaneClient``.
        callback: Called with every event (set programmatically; callables do not come from YAML).
        prometheus_port: Serve Prometheus metrics on this port (0 picks a free one); ``None`` = off.
        log_events: Log every event at DEBUG level through ``kvplane._observability``.
    """

    enabled: bool = False
    callback: Callable[[dict[str, Any]], None] | None = None
    prometheus_port: int | None = None
    log_events: bool = False

    @classmethod
    def load(cls, raw: Any) -> ObservabilityConfig:
        """Validate a mapping (or ``None``, or an instance) into an ``ObservabilityConfig``."""
        if raw is None:
            return cls()
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, Mapping):
            raise _bad("observability", f"must be a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)} | {"verify_tensor_hash"}
        for key in raw:
            if key not in known:
                raise _bad(f"observability.{key}", f"is not a known key (known keys: {sorted(known)})")
        verify = raw.get("verify_tensor_hash", False)
        if verify is not False:
            raise _bad(
                "observability.verify_tensor_hash",
                f"must be false: kvplane does not fingerprint tensors between put and get, got {verify!r}",
            )
        enabled = raw.get("enabled", False)
        if not isinstance(enabled, bool):
            raise _bad("observability.enabled", "must be true or false")
        callback = raw.get("callback")
        if callback is not None and not callable(callback):
            raise _bad("observability.callback", "must be callable")
        port = raw.get("prometheus_port")
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536
        ):
            raise _bad("observability.prometheus_port", f"must be a port number or null, got {port!r}")
        log_events = raw.get("log_events", False)
        if not isinstance(log_events, bool):
            raise _bad("observability.log_events", "must be true or false")
        return cls(enabled=enabled, callback=callback, prometheus_port=port, log_events=log_events)


@dataclass(frozen=True)
class DataPlaneConfig:
    """A validated data plane configuration. Build it with :meth:`load`.

    ``impl`` is always the canonical name (``"embedded"`` or ``"transfer_queue"``); an alias given to
    the constructor is replaced by the name it means.
    """

    impl: str = DEFAULT_IMPL
    enabled: bool = True
    backend: str | None = None
    storage_capacity: int | None = None
    num_storage_units: int | None = None
    claim_meta_poll_interval_s: float = 0.01
    global_segment_size: int | None = None
    local_buffer_size: int | None = None
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    request_timeout_s: float = 60.0
    bootstrap_timeout_s: float = 120.0
    seq_len_tag: str = "seq_len"
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)

    def __post_init__(self) -> None:
        if self.impl in _IMPL_ALIASES:
            object.__setattr__(self, "impl", _IMPL_ALIASES[self.impl])

    @property
    def display_name(self) -> str:
        """The backend in one word for people: ``embedded``, ``transfer_queue/simple``, ...

        Examples:
            >>> DataPlaneConfig().display_name, DataPlaneConfig.load("mooncake").display_name
            ('embedded', 'transfer_queue/mooncake_cpu')
        """
        return self.impl if self.backend is None else f"{self.impl}/{self.backend}"

    @classmethod
    def load(
        cls, source: DataPlaneConfig | Mapping[str, Any] | str | os.PathLike[str] | None
    ) -> DataPlaneConfig:
        """Build a config from ``None`` (embedded backend), a mapping, a YAML path, an example's name
        (:func:`resolve_config_path`), or a config.

        A YAML file may hold the keys at top level or under a ``data_plane:`` section.

        Raises:
            DataPlaneBadRequest: A key is unknown, missing, or has a bad value (the message names it).
        """
        raw = _read(source)
        if isinstance(raw, cls):
            return raw
        return cls() if raw is None else cls._from_mapping(raw)

    @classmethod
    def _from_mapping(cls, raw: Any) -> DataPlaneConfig:
        if not isinstance(raw, Mapping):
            raise DataPlaneBadRequest(f"data plane config must be a mapping, got {type(raw).__name__}")
        known = [f.name for f in fields(cls)]
        for key in raw:
            if key not in known and key not in _NEMO_RL_KEYS:
                raise _bad(str(key), f"is an unknown key (known keys: {', '.join([*known, *_NEMO_RL_KEYS])})")
        raw = _from_nemo_rl_spelling(raw)
        impl = _canonical_impl(raw.get("impl", DEFAULT_IMPL))
        if impl not in _IMPLS:
            raise _bad("impl", f"must be one of {list(_IMPLS)} ({_ALIAS_NOTE}), got {impl!r}")
        values: dict[str, Any] = {"impl": impl}
        values["enabled"] = _check_bool(raw, "enabled", True)
        if impl == "transfer_queue":
            for key in _TQ_REQUIRED:
                if key not in raw:
                    raise _bad(key, "is required for impl: transfer_queue")
            if raw["backend"] not in _BACKENDS:
                raise _bad("backend", f"must be one of {list(_BACKENDS)}, got {raw['backend']!r}")
            values["backend"] = raw["backend"]
            if raw["backend"] == "mooncake_cpu":
                for key in _MOONCAKE_REQUIRED:
                    if key not in raw:
                        raise _bad(key, "is required for backend: mooncake_cpu")
                    values[key] = _check_int(raw, key, minimum=1)
            values["storage_capacity"] = _check_int(raw, "storage_capacity", minimum=1, nullable=True)
            values["num_storage_units"] = _check_int(raw, "num_storage_units", minimum=1)
            values["ray_address"] = _check_str(raw, "ray_address", nullable=True)
            values["ray_num_cpus"] = _check_int(raw, "ray_num_cpus", minimum=1, nullable=True)
            values["bootstrap_timeout_s"] = _check_float(raw, "bootstrap_timeout_s", 120.0)
        else:
            for key in (
                *_TQ_REQUIRED,
                *_MOONCAKE_REQUIRED,
                "ray_address",
                "ray_num_cpus",
                "bootstrap_timeout_s",
            ):
                if key in raw and key != "claim_meta_poll_interval_s" and raw[key] is not None:
                    raise _bad(key, "applies only to impl: transfer_queue")
        values["claim_meta_poll_interval_s"] = _check_float(raw, "claim_meta_poll_interval_s", 0.01)
        values["request_timeout_s"] = _check_float(raw, "request_timeout_s", 60.0)
        values["seq_len_tag"] = _check_str(raw, "seq_len_tag", nullable=False, default="seq_len")
        values["observability"] = ObservabilityConfig.load(raw.get("observability"))
        return cls(**values)


#: NeMo-RL's keys that kvplane reads as its own (see the module docstring).
_NEMO_RL_KEYS = ("controller_address", "ack_timeout_ms", "simple", "mooncake_cpu")
#: NeMo-RL's per-backend blocks: sub-keys, and NeMo-RL's defaults for the sizes a block omits.
_BLOCKS: dict[str, tuple[tuple[str, ...], dict[str, int]]] = {
    "simple": (("storage_capacity", "num_storage_units"), {"storage_capacity": 1_000_000}),
    "mooncake_cpu": (
        ("global_segment_size", "local_buffer_size", "reuse_registered_buffers", "staging_buffer_size"),
        {"global_segment_size": 64 << 30, "local_buffer_size": 4 << 30},
    ),
}
#: Sub-keys of ``mooncake_cpu:`` for NeMo-RL's RDMA buffer pool: validated, no effect in kvplane.
_RDMA_POOL_KEYS = {"reuse_registered_buffers": bool, "staging_buffer_size": int}


def _from_nemo_rl_spelling(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrite NeMo-RL's keys into kvplane's; a key given both ways must agree."""
    out = dict(raw)

    def put(key: str, value: Any, source: str) -> None:
        if key in out and out[key] != value:
            raise _bad(source, f"conflicts with {key!r} ({value!r} != {out[key]!r})")
        out[key] = value

    address = out.pop("controller_address", None)
    if address is not None:
        if not isinstance(address, str) or not address:
            raise _bad("controller_address", f"must be a non-empty string or null, got {address!r}")
        if _canonical_impl(out.get("impl", DEFAULT_IMPL)) != "transfer_queue":
            raise _bad("controller_address", "applies only to impl: transfer_queue")
        put("ray_address", address, "controller_address")
    if "ack_timeout_ms" in out:
        ms = out.pop("ack_timeout_ms")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not ms > 0:
            raise _bad("ack_timeout_ms", f"must be a positive number of milliseconds, got {ms!r}")
        put("request_timeout_s", ms / 1000, "ack_timeout_ms")
    for block, (sub_keys, defaults) in _BLOCKS.items():
        if block not in out:
            continue
        values = out.pop(block)
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise _bad(block, f"must be a mapping, got {type(values).__name__}")
        for key in values:
            if key not in sub_keys:
                raise _bad(f"{block}.{key}", f"is not a known key (known keys: {list(sub_keys)})")
        for key, kind in _RDMA_POOL_KEYS.items():
            if key in values and (not isinstance(values[key], kind) or kind is int and
                                  (isinstance(values[key], bool) or values[key] < 1)):
                raise _bad(f"{block}.{key}", f"must be {'true or false' if kind is bool else 'an integer >= 1'}")
        if out.get("backend") != block:
            continue  # as in NeMo-RL, only the selected backend's block is read
        for key in sub_keys:
            if key in _RDMA_POOL_KEYS:
                continue
            if key in values:
                put(key, values[key], f"{block}.{key}")
            elif key not in out and key in defaults:
                out[key] = defaults[key]
    return out


_ALIAS_NOTE = ", ".join(f"{alias!r} means {name!r}" for alias, name in _IMPL_ALIASES.items())


def _canonical_impl(impl: Any) -> Any:
    """The impl an accepted spelling names (anything else is returned for the caller to reject)."""
    return _IMPL_ALIASES.get(impl, impl) if isinstance(impl, str) else impl


def resolve_config_path(source: str | os.PathLike[str]) -> Path:
    """The YAML file a config source names: an existing file, else a packaged example's name.

    The rule: a path to an existing file is that file. Otherwise a *string* without a path
    separator and without a ``.yaml``/``.yml`` suffix is the name of an example in
    :mod:`kvplane.examples` (``"transfer_queue"`` → ``kvplane/examples/transfer_queue.yaml``), so it
    resolves the same from any directory. Anything else is a missing file.

    Raises:
        DataPlaneBadRequest: No such file, or no example of that name (the message lists them).

    Examples:
        >>> resolve_config_path("mooncake").name
        'mooncake.yaml'
        >>> resolve_config_path("configs/missing.yaml")
        Traceback (most recent call last):
        ...
        kvplane._errors.DataPlaneBadRequest: data plane config: no such file 'configs/missing.yaml'
    """
    path = Path(source)
    if path.is_file():
        return path
    if isinstance(source, str) and _is_example_name(source):
        if source in example_names():
            return example_path(source)
        raise DataPlaneBadRequest(
            f"data plane config: {source!r} is neither a file nor an example config name "
            f"(examples: {', '.join(example_names())})"
        )
    raise DataPlaneBadRequest(f"data plane config: no such file {str(path)!r}")


def _is_example_name(source: str) -> bool:
    separators = {"/", os.sep, os.altsep} - {None}
    has_separator = any(sep in source for sep in separators)
    return bool(source) and not has_separator and not source.endswith((".yaml", ".yml"))


def _read(source: Any) -> Any:
    """The raw mapping a config source holds (a config or ``None`` pass through)."""
    if source is None or isinstance(source, DataPlaneConfig):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = resolve_config_path(source)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise DataPlaneBadRequest(f"data plane config: {str(path)!r} is not valid YAML: {exc}") from exc
        if isinstance(raw, Mapping) and set(raw) == {"data_plane"}:
            raw = raw["data_plane"]
        return raw if raw is not None else {}
    if isinstance(source, Mapping):
        return source
    raise DataPlaneBadRequest(
        f"data plane config must be None, a mapping or a YAML path, got {type(source).__name__}"
    )


def check_buildable(source: DataPlaneConfig | Mapping[str, Any] | str | os.PathLike[str] | None) -> None:
    """What ``build_data_plane_client`` checks before anything else, worded as NeMo-RL's factory.

    ``enabled`` first (a disabled config builds nothing, whatever else it holds), then ``impl``.

    Raises:
        DataPlaneBadRequest: The config is disabled ("disabled" in the message) or names an
            unknown impl ("unknown data_plane impl: ...").
    """
    if source is None:
        raise DataPlaneBadRequest(
            "build_data_plane_client needs a config (None builds nothing, as in NeMo-RL): pass "
            "{'impl': 'embedded'} for the embedded backend, or kvplane.init() for the process default"
        )
    raw = _read(source)
    if not isinstance(raw, (Mapping, DataPlaneConfig)):
        return  # anything else is load()'s to report
    enabled = raw.enabled if isinstance(raw, DataPlaneConfig) else raw.get("enabled", True)
    if enabled is False:
        raise DataPlaneBadRequest(
            "build_data_plane_client called with data_plane disabled ('enabled': false); "
            "keep the legacy path that never engages the data plane, or set enabled: true"
        )
    impl = raw.impl if isinstance(raw, DataPlaneConfig) else raw.get("impl", DEFAULT_IMPL)
    if _canonical_impl(impl) not in _IMPLS:
        raise DataPlaneBadRequest(
            f"unknown data_plane impl: {impl!r} (known: {', '.join(_IMPLS)}; {_ALIAS_NOTE})"
        )


def _check_bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise _bad(key, f"must be true or false, got {value!r}")
    return value


def _check_int(raw: Mapping[str, Any], key: str, *, minimum: int, nullable: bool = False) -> int | None:
    value = raw.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, f"must be an integer >= {minimum}{' or null' if nullable else ''}, got {value!r}")
    return value


def _check_float(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _bad(key, f"must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_str(raw: Mapping[str, Any], key: str, *, nullable: bool, default: str | None = None) -> str | None:
    value = raw.get(key, default)
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        raise _bad(key, f"must be a non-empty string, got {value!r}")
    return value
