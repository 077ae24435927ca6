"""surg_invnerf_ros: Surg-InvNeRF tissue tracking for stereo endoscopy (ROS-free core + ROS 2 shell).

Public API (imported lazily so `import surg_invnerf_ros` stays light):
`track_sequence`, `fit_invnerf`, `infer_tracks` (track.py), `OnlineTracker` (online.py) and the
configs `FitConfig`, `FrontendConfig`, `NodeConfig`, `SynthConfig` (config/).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what __getattr__ below returns, for type checkers
    from .config import FitConfig, FrontendConfig, NodeConfig, SynthConfig, load_config
    from .online import OnlineTracker
    from .track import fit_invnerf, infer_tracks, track_sequence

__version__ = "0.7.7"

_LAZY = {
    "track_sequence": "track", "fit_invnerf": "track", "infer_tracks": "track",
    "OnlineTracker": "online",
    "FitConfig": "config", "FrontendConfig": "config", "NodeConfig": "config", "SynthConfig": "config",
    "load_config": "config",
}

__all__ = ["FitConfig", "FrontendConfig", "NodeConfig", "OnlineTracker", "SynthConfig", "fit_invnerf",
           "infer_tracks", "load_config", "track_sequence"]  # the keys of _LAZY (checked in the tests)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
