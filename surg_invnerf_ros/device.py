"""The one device resolver: "auto" | "cpu" | "cuda" → the device a fit runs on.

torch is imported when a device is resolved, not at import time, so processes that never fit
(the ROS node with a process worker) can use it without loading torch.
"""

from __future__ import annotations

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str, key: str = "device") -> str:
    """auto → "cuda" when torch sees a GPU, else "cpu"; "cuda" without a GPU is refused. `key` names
    the config field in the error.

    Raises:
        ConfigError: an unknown name, or `<key>: cuda requested but ...`.
    """
    if device not in DEVICES:
        raise ConfigError(f"{key}: expected one of {'|'.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu"
    import torch  # optional here: see the module docstring

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ConfigError(f"{key}: cuda requested but torch sees no CUDA device "
                          "(torch.cuda.is_available() is False); use device=auto or cpu")
    return "cpu"
