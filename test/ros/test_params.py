"""ros/params.py + NodeConfig: one declared parameter per config field, refused when bad."""

from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.parameter import Parameter

from surg_invnerf_ros.config import NodeConfig, from_dict
from surg_invnerf_ros.errors import ConfigError
from surg_invnerf_ros.ros import params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ctx():
    c = rclpy.Context()
    rclpy.init(context=c)
    yield c
    rclpy.shutdown(context=c)


def make_node(ctx, overrides=None):
    return rclpy.create_node("params_test", context=ctx,
                             parameter_overrides=[Parameter(k, value=v) for k, v in (overrides or {}).items()],
                             automatically_declare_parameters_from_overrides=False)


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TestDeclare:
    def test_every_field_is_a_described_read_only_parameter(self, ctx):
        node = make_node(ctx)
        cfg = params.declare_config(node, NodeConfig)
        assert cfg == NodeConfig()
        fields = {name for name, *_ in params.leaf_fields(NodeConfig)}
        declared = set(node._parameters) - {"use_sim_time", "start_type_description_service"}
        # Fails when NodeConfig grows a field that is not declared (or the other way round).
        assert declared == fields
        d = node.describe_parameter("sync.slop_s")
        assert d.read_only and "seconds" in d.description and d.additional_constraints == "range [0.0, 1.0]"
        assert node.describe_parameter("device").additional_constraints == "one of: auto, cpu, cuda"
        assert all(node.describe_parameter(n).description for n in fields)
        node.destroy_node()

    def test_overrides_are_typed_by_the_config(self, ctx):
        node = make_node(ctx, {"sync.slop_s": 0, "queries.points_px": [1, 2, 3, 4],
                               "refine.fit_overrides": ["max_steps=5"], "device": "cpu"})
        cfg = params.declare_config(node, NodeConfig)
        assert cfg.sync.slop_s == 0.0 and isinstance(cfg.sync.slop_s, float)  # a YAML 0 for a float is fine
        assert cfg.queries.points_px == (1.0, 2.0, 3.0, 4.0)  # an integer array becomes floats
        assert cfg.refine.fit_overrides == ("max_steps=5",) and cfg.device == "cpu"
        node.destroy_node()

    @pytest.mark.parametrize("name,value,match", [
        ("device", "gpu", "device: expected one of auto|cpu|cuda, got 'gpu'"),
        ("publish.cloud_rate_hz", -1.0, r"publish.cloud_rate_hz: expected >= 0.0, got -1.0"),
        ("sync.max_rate_hz", -5.0, "sync.max_rate_hz: expected >= 0.0"),
        ("sync.queue_size", 0, "sync.queue_size: expected >= 1"),
        ("queries.points_px", [1.0, 2.0, 3.0], "queries.points_px: expected an even count"),
        ("refine.enabled", "yes", "refine.enabled: expected true or false"),
    ])
    def test_bad_value_names_the_parameter(self, ctx, name, value, match):
        node = make_node(ctx, {name: value})
        with pytest.raises(ConfigError, match=match):
            params.declare_config(node, NodeConfig)
        node.destroy_node()

    def test_unknown_parameter_is_refused(self, ctx):
        node = make_node(ctx, {"sync.slopp_s": 0.1, "qos_overrides./x.subscription.depth": 3})
        assert params.unknown_overrides(node, NodeConfig) == ["sync.slopp_s"]
        with pytest.raises(ConfigError, match=r"sync.slopp_s: unknown parameter \(did you mean sync.slop_s\?\)"):
            params.check_no_unknown(node, NodeConfig)
        node.destroy_node()


class TestTrackYaml:
    def test_track_yaml_is_a_valid_node_config(self):
        doc = yaml.safe_load((REPO / "config/track.yaml").read_text())
        values = doc["/**"]["ros__parameters"]
        known = {name for name, *_ in params.leaf_fields(NodeConfig)}
        assert set(flatten(values)) <= known
        cfg = from_dict(NodeConfig, values)
        # with the file alone the node waits for queries (DESIGN §5)
        assert cfg.queries.points_px == () and cfg.queries.auto_grid == 0
        assert cfg.refine.enabled

    def test_fit_overrides_in_track_yaml_load(self):
        from surg_invnerf_ros.config import FitConfig, load_config

        doc = yaml.safe_load((REPO / "config/track.yaml").read_text())
        overrides = doc["/**"]["ros__parameters"]["refine"]["fit_overrides"]
        fit = load_config(FitConfig, None, overrides)
        assert fit.max_steps == 800


def test_range_text():
    assert params.range_text({"lo": 0.0, "hi": None}, float) == ">= 0.0"
    assert params.range_text({"lo": None, "hi": 3}, int) == "<= 3"
    assert params.range_text({}, str) == ""
