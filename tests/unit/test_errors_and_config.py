"""The error tree's builtin bases, and config validation that names the bad key."""

from __future__ import annotations

import pytest

import kvplane
from kvplane import (
    DataPlaneBadRequest,
    DataPlaneClearError,
    DataPlaneConfig,
    DataPlaneError,
    DataPlaneKeyError,
    DataPlaneNotReady,
    DataPlaneReadError,
    DataPlaneTimeout,
    DataPlaneUnavailable,
    DataPlaneWriteError,
    build_data_plane_client,
)
from kvplane._groups import as_bool, as_float, as_int, groups_from_tags


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (DataPlaneError, (RuntimeError,)),
        (DataPlaneUnavailable, (DataPlaneError,)),
        (DataPlaneTimeout, (DataPlaneError, TimeoutError)),
        (DataPlaneReadError, (DataPlaneError,)),
        (DataPlaneWriteError, (DataPlaneError,)),
        (DataPlaneClearError, (DataPlaneError,)),
        (DataPlaneNotReady, (DataPlaneError,)),
        (DataPlaneBadRequest, (DataPlaneError, ValueError)),
        (DataPlaneKeyError, (DataPlaneBadRequest, KeyError, ValueError)),
    ],
)
def test_error_tree(error, bases):
    for base in bases:
        assert issubclass(error, base)


def test_key_error_message_is_not_quoted():
    assert str(DataPlaneKeyError("no key 'a'")) == "no key 'a'"


def test_public_surface_resolves():
    for name in kvplane.__all__:
        if name in {"shard_meta_for_dp", "MetricsDataPlaneClient"}:
            continue  # built by other modules' own tests
        assert getattr(kvplane, name) is not None, name
    with pytest.raises(AttributeError):
        kvplane.no_such_name  # noqa: B018


def test_config_defaults_to_embedded_and_memory_is_an_alias():
    assert DataPlaneConfig.load(None) == DataPlaneConfig()
    assert DataPlaneConfig.load({}).impl == "embedded"
    assert DataPlaneConfig.load({"impl": "memory"}) == DataPlaneConfig.load({"impl": "embedded"})
    assert DataPlaneConfig.load({"impl": "memory"}) == DataPlaneConfig()
    assert DataPlaneConfig(impl="memory").impl == "embedded"  # built directly, too
    assert DataPlaneConfig().display_name == "embedded"
    for impl in ("memory", "embedded"):
        client = build_data_plane_client({"impl": impl})
        assert type(client).__name__ == "MemoryDataPlaneClient"
        client.close()


def test_an_unknown_impl_names_the_canonical_impls_and_the_alias():
    with pytest.raises(DataPlaneBadRequest) as caught:
        DataPlaneConfig.load({"impl": "mem"})
    assert str(caught.value) == (
        "data plane config: 'impl' must be one of ['embedded', 'transfer_queue'] "
        "('memory' means 'embedded'), got 'mem'"
    )
    with pytest.raises(DataPlaneBadRequest, match=r"^unknown data_plane impl: 'mem' \(known: embedded, "):
        build_data_plane_client({"impl": "mem"})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"impl": "noop"}, "impl"),
        ({"imp": "memory"}, "imp"),
        ({"impl": "transfer_queue"}, "backend"),
        (
            {
                "impl": "transfer_queue",
                "backend": "redis",
                "storage_capacity": 1,
                "num_storage_units": 1,
                "claim_meta_poll_interval_s": 0.1,
            },
            "backend",
        ),
        (
            {
                "impl": "transfer_queue",
                "backend": "simple",
                "storage_capacity": 1,
                "num_storage_units": 0,
                "claim_meta_poll_interval_s": 0.1,
            },
            "num_storage_units",
        ),
        (
            {
                "impl": "transfer_queue",
                "backend": "mooncake_cpu",
                "storage_capacity": 1,
                "num_storage_units": 1,
                "claim_meta_poll_interval_s": 0.1,
                "global_segment_size": 1,
            },
            "local_buffer_size",
        ),
        ({"impl": "memory", "claim_meta_poll_interval_s": -1}, "claim_meta_poll_interval_s"),
        ({"impl": "memory", "enabled": "yes"}, "enabled"),
        ({"impl": "memory", "num_storage_units": 2}, "num_storage_units"),
        ({"impl": "memory", "observability": {"enabled": True, "colour": 1}}, "observability.colour"),
        ({"impl": "memory", "observability": {"prometheus_port": 70000}}, "observability.prometheus_port"),
    ],
)
def test_bad_config_names_the_key(raw, key):
    with pytest.raises(DataPlaneBadRequest, match=f"'{key}'"):
        DataPlaneConfig.load(raw)


def test_yaml_configs_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data_plane:\n  impl: memory\n  seq_len_tag: length\n")
    assert DataPlaneConfig.load(path).seq_len_tag == "length"
    path.write_text("impl: [unclosed\n")
    with pytest.raises(DataPlaneBadRequest, match="YAML"):
        DataPlaneConfig.load(str(path))
    with pytest.raises(DataPlaneBadRequest, match="no such file"):
        DataPlaneConfig.load(tmp_path / "missing.yaml")


def test_shipped_examples_are_valid():
    from importlib.resources import files

    examples = sorted(p for p in files("kvplane").joinpath("examples").iterdir() if p.name.endswith(".yaml"))
    assert examples, "kvplane/examples/*.yaml must ship with the package"
    for path in examples:
        DataPlaneConfig.load(str(path))


def test_factory_refuses_a_disabled_config():
    with pytest.raises(DataPlaneBadRequest, match="enabled"):
        build_data_plane_client({"impl": "memory", "enabled": False})


def test_tag_coercers():
    assert [as_int(v) for v in ("4", 4.7, "4.5", True, None, "x")] == [4, 4, None, 1, None, None]
    assert [as_float(v) for v in ("12.5", None, "x")] == [12.5, None, None]
    assert [as_bool(v) for v in ("true", "Yes", "1", "no", 0, 1, True)] == [
        True,
        True,
        True,
        False,
        False,
        True,
        True,
    ]


def test_groups_fall_back_to_the_key_and_to_num_keys():
    groups = groups_from_tags(
        "p", {"b": {"group_id": "g", "num_keys": 3, "committed": True}, "a": None, "c": {"group_id": "g"}}
    )
    assert [(g.group_id, g.keys) for g in groups] == [("a", ["a"]), ("g", ["b", "c"])]
    assert groups[1].expected_num_keys == 3 and not groups[1].is_complete and not groups[1].committed
    explicit_none = groups_from_tags("p", {"a": {"expected_num_keys": None, "num_keys": 3}})
    assert explicit_none[0].expected_num_keys is None


# ── NeMo-RL's factory wording and config keys ──────────────────────────

NEMO_RL_TQ = {"enabled": True, "impl": "transfer_queue", "backend": "simple", "claim_meta_poll_interval_s": 0.05}


@pytest.mark.parametrize(
    "cfg",
    [
        {"enabled": False, "impl": "transfer_queue"},  # incomplete, but disabled is reported first
        {"enabled": False, "impl": "no_such_thing", "colour": 1},
        DataPlaneConfig(enabled=False),
    ],
    ids=["incomplete-tq", "unknown-impl-and-key", "config"],
)
def test_factory_reports_disabled_before_anything_else(cfg):
    with pytest.raises(DataPlaneBadRequest, match="disabled") as caught:
        build_data_plane_client(cfg)
    assert isinstance(caught.value, ValueError) and "legacy" in str(caught.value)


def test_factory_reads_enabled_from_a_yaml_data_plane_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data_plane:\n  enabled: false\n  impl: transfer_queue\n")
    with pytest.raises(DataPlaneBadRequest, match="disabled"):
        build_data_plane_client(path)


@pytest.mark.parametrize("impl", ["noop", "no_such_thing"])
def test_factory_names_an_unknown_impl(impl):
    with pytest.raises(ValueError, match=rf"unknown.*impl.*{impl!r}"):
        build_data_plane_client({"enabled": True, "impl": impl})
    # Loading the config alone keeps naming the key.
    with pytest.raises(DataPlaneBadRequest, match="'impl' must be one of"):
        DataPlaneConfig.load({"impl": impl})


def test_nemo_rl_keys_map_onto_kvplane_keys():
    cfg = DataPlaneConfig.load(
        {**NEMO_RL_TQ, "simple": {"num_storage_units": 2}, "controller_address": "10.0.0.1:6379",
         "ack_timeout_ms": 2500, "mooncake_cpu": {"global_segment_size": 1}}
    )
    assert (cfg.storage_capacity, cfg.num_storage_units) == (1_000_000, 2)  # NeMo-RL's default capacity
    assert (cfg.ray_address, cfg.request_timeout_s) == ("10.0.0.1:6379", 2.5)
    assert cfg.global_segment_size is None  # only the selected backend's block is read
    assert DataPlaneConfig.load({"impl": "memory", "ack_timeout_ms": 500}).request_timeout_s == 0.5


def test_nemo_rl_mooncake_block_fills_sizes_with_nemo_rl_defaults():
    cfg = DataPlaneConfig.load(
        {**NEMO_RL_TQ, "backend": "mooncake_cpu", "storage_capacity": None, "num_storage_units": 1,
         "mooncake_cpu": {"local_buffer_size": 1 << 20, "reuse_registered_buffers": False,
                          "staging_buffer_size": 1 << 20}}
    )
    assert (cfg.global_segment_size, cfg.local_buffer_size) == (64 << 30, 1 << 20)


def test_nemo_rl_spellings_agreeing_with_kvplane_keys_are_fine():
    cfg = DataPlaneConfig.load({**NEMO_RL_TQ, "storage_capacity": 8, "simple": {"storage_capacity": 8,
                                "num_storage_units": 1}, "request_timeout_s": 3, "ack_timeout_ms": 3000})
    assert (cfg.storage_capacity, cfg.request_timeout_s) == (8, 3.0)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"simple": {"num_storage_units": 1}, "num_storage_units": 2}, "simple.num_storage_units"),
        ({"simple": {"num_storage_units": 1, "units": 2}}, "simple.units"),
        ({"simple": [1]}, "simple"),
        ({"simple": {"num_storage_units": 1}, "mooncake_cpu": {"staging_buffer_size": 0}},
         "mooncake_cpu.staging_buffer_size"),
        ({"simple": {"num_storage_units": 1}, "mooncake_cpu": {"reuse_registered_buffers": "yes"}},
         "mooncake_cpu.reuse_registered_buffers"),
        ({"simple": {}}, "num_storage_units"),
        ({"simple": {"num_storage_units": 1}, "ack_timeout_ms": 0}, "ack_timeout_ms"),
        ({"simple": {"num_storage_units": 1}, "ack_timeout_ms": 10, "request_timeout_s": 5}, "ack_timeout_ms"),
        ({"simple": {"num_storage_units": 1}, "controller_address": ""}, "controller_address"),
        ({"simple": {"num_storage_units": 1}, "controller_address": "a", "ray_address": "b"}, "controller_address"),
        ({"simple": {"num_storage_units": 1}, "observability": {"verify_tensor_hash": True}},
         "observability.verify_tensor_hash"),
        ({"simple": {"num_storage_units": 1}, "controler_address": "a"}, "controler_address"),
    ],
)
def test_bad_nemo_rl_keys_name_the_key(extra, key):
    with pytest.raises(DataPlaneBadRequest, match=f"'{key}'"):
        DataPlaneConfig.load({**NEMO_RL_TQ, **extra})


def test_controller_address_applies_only_to_transfer_queue():
    with pytest.raises(DataPlaneBadRequest, match="'controller_address' applies only to impl: transfer_queue"):
        DataPlaneConfig.load({"impl": "memory", "controller_address": "auto"})
    assert DataPlaneConfig.load({"impl": "memory", "controller_address": None}).ray_address is None
    assert DataPlaneConfig.load({"observability": {"verify_tensor_hash": False}}).observability.enabled is False


def test_factory_refuses_a_none_config_as_nemo_rl_does_while_init_keeps_the_embedded_default():
    from kvplane import DataPlaneBadRequest, build_data_plane_client

    with pytest.raises(ValueError, match="needs a config") as info:
        build_data_plane_client(None)
    assert isinstance(info.value, DataPlaneBadRequest)
    client = kvplane.init()
    try:
        assert client.get_capabilities() is not None
    finally:
        kvplane.close()
