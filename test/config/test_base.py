"""The config machinery: field metadata for the CLI, choices, the one-line errors and the package's exports."""

import dataclasses
import importlib
import inspect
import pkgutil
import typing

import pytest

import surg_invnerf_ros.config as config_pkg
from surg_invnerf_ros.config import (
    FitConfig,
    HexPlaneConfig,
    NodeConfig,
    SamplerConfig,
    field_docs,
    field_meta,
    load_config,
)
from surg_invnerf_ros.errors import ConfigError

CLASSES = {name: getattr(config_pkg, name) for name in config_pkg.__all__
           if name.endswith("Config") and dataclasses.is_dataclass(getattr(config_pkg, name))}


def leaf_fields_with_choices():
    """(config class, field name, choices) for every Literal field declared by an exported config."""
    out = []
    for cls in CLASSES.values():
        for f in dataclasses.fields(cls):
            meta = field_meta(cls, f.name)
            if meta.choices:
                out.append((cls, f.name, meta.choices))
    return out


class TestFieldMeta:
    def test_reads_the_declaration(self):
        meta = field_meta(FitConfig, "device")
        declared = next(f for f in dataclasses.fields(FitConfig) if f.name == "device")
        assert meta.default == FitConfig().device
        assert meta.doc == declared.metadata["doc"] and meta.doc
        assert meta.choices == typing.get_args(typing.get_type_hints(FitConfig)["device"])
        assert "cpu" in meta.choices and meta.default in meta.choices

    def test_dotted_name_reaches_nested_fields(self):
        meta = field_meta(FitConfig, "sampler.error_share")
        assert (meta.name, meta.default, meta.lo, meta.hi) == ("error_share", SamplerConfig().error_share, 0.0, 1.0)
        assert meta.type is float and meta.choices == ()
        deep = field_meta(NodeConfig, "frontend.stereo.block_size")
        assert deep.default == NodeConfig().frontend.stereo.block_size and deep.type is int

    def test_tuple_field(self):
        meta = field_meta(HexPlaneConfig, "resolutions")
        assert typing.get_origin(meta.type) is tuple and meta.default == HexPlaneConfig().resolutions

    @pytest.mark.parametrize("name, match", [("devic", r"FitConfig: no field 'devic' \(expected one of .*device"),
                                             ("sampler.bogus", "SamplerConfig: no field 'bogus'"),
                                             ("device.x", "FitConfig.device: not a group")])
    def test_unknown_names_are_refused(self, name, match):
        with pytest.raises(ConfigError, match=match):
            field_meta(FitConfig, name)

    @pytest.mark.parametrize("cls", CLASSES.values(), ids=CLASSES.keys())
    def test_agrees_with_field_docs(self, cls):
        rows = field_docs(cls)
        assert rows
        for key, default, doc, lo, hi in rows:
            meta = field_meta(cls, key)
            assert (meta.default, meta.doc, meta.lo, meta.hi) == (default, doc, lo, hi), key
            assert doc.strip(), f"{cls.__name__}.{key}: no help text"


class TestChoices:
    def test_every_str_field_with_fixed_values_has_choices(self):
        found = {(cls.__name__, name) for cls, name, _ in leaf_fields_with_choices()}
        assert {("FitConfig", "device"), ("NodeConfig", "device"), ("SynthConfig", "difficulty"),
                ("RefineConfig", "worker"), ("SamplerConfig", "strategy")} <= found

    @pytest.mark.parametrize("cls, name, choices", leaf_fields_with_choices(),
                             ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
    def test_default_is_a_choice_and_others_are_refused(self, cls, name, choices):
        assert getattr(cls(), name) in choices
        for value in choices:
            assert getattr(cls(**{name: value}), name) == value
        with pytest.raises(ConfigError) as err:
            cls(**{name: "not-a-choice"})
        msg = str(err.value)
        assert "\n" not in msg
        assert f"{name}: expected one of {'|'.join(map(str, choices))}, got 'not-a-choice'" in msg

    def test_override_outside_the_choices_names_the_dotted_key(self):
        with pytest.raises(ConfigError, match=r"^fit\.sampler\.uniform_from: expected one of all\|unconverged"):
            load_config(FitConfig, None, ["sampler.uniform_from=some"])


class TestPackage:
    def submodules(self):
        return [importlib.import_module(m.name) for m in pkgutil.iter_modules(config_pkg.__path__, "surg_invnerf_ros.config.")]

    def test_every_public_name_is_exported(self):
        mods = self.submodules()
        assert len(mods) >= 5
        missing = []
        for mod in mods:
            for name, obj in vars(mod).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                    continue
                if inspect.isclass(obj) or inspect.isfunction(obj):
                    if getattr(config_pkg, name, None) is not obj or name not in config_pkg.__all__:
                        missing.append(f"{mod.__name__}.{name}")
        assert not missing, f"not re-exported by surg_invnerf_ros.config: {missing}"

    def test_all_resolves(self):
        assert sorted(set(config_pkg.__all__)) == sorted(config_pkg.__all__)
        for name in config_pkg.__all__:
            assert hasattr(config_pkg, name), name
