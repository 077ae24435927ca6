"""Configuration as data: frozen dataclasses with documented, range-checked fields.

One module per layer (`frontend`, `model`, `fit`, `kinematics`, `synth`, `bench`, `node`,
`sources`) over the machinery in `base`; every name is re-exported here, so callers import from
`surg_invnerf_ros.config`.
"""

from .base import (
    FieldMeta,
    apply_overrides,
    check_fields,
    field_docs,
    field_meta,
    from_dict,
    load_config,
    nested,
    option,
    read_yaml_mapping,
    to_dict,
)
from .bench import BenchConfig, SoakConfig, StirBenchConfig
from .evaluation import TapVidConfig
from .fit import FitConfig, LossConfig, OptimConfig, SamplerConfig, load_fit_and_frontend
from .frontend import FlowConfig, FrontendConfig, LKConfig, MaskConfig, StereoConfig, StoreConfig
from .kinematics import KinematicsConfig
from .model import CanonicalConfig, CouplingConfig, HexPlaneConfig, RenderConfig
from .node import NodeConfig, OnlineConfig, PublishConfig, QueryConfig, RefineConfig, SyncConfig
from .sources import BagPlayerConfig, SyntheticSourceConfig
from .synth import SynthConfig

__all__ = [
    "BagPlayerConfig", "BenchConfig", "CanonicalConfig", "CouplingConfig", "FieldMeta", "FitConfig", "FlowConfig",
    "FrontendConfig", "HexPlaneConfig", "KinematicsConfig", "LKConfig", "LossConfig", "MaskConfig", "NodeConfig",
    "OnlineConfig", "OptimConfig", "PublishConfig", "QueryConfig", "RefineConfig", "RenderConfig", "SamplerConfig",
    "SoakConfig", "StereoConfig", "StirBenchConfig", "StoreConfig", "SyncConfig", "SynthConfig", "SyntheticSourceConfig",
    "TapVidConfig", "apply_overrides", "check_fields", "field_docs", "field_meta", "from_dict", "load_config",
    "load_fit_and_frontend", "nested", "option", "read_yaml_mapping", "to_dict",
]
