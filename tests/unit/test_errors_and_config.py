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
from kvplane.groups import as_bool, as_float, as_int, groups_from_tags


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


def test_config_defaults_to_memory():
    assert DataPlaneConfig.load(None) == DataPlaneConfig()
    assert DataPlaneConfig.load({}).impl == "memory"


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
