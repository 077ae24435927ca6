"""How much RAM the fit's front end needs, checked before it starts.

The correspondence store (`store.py`) keeps a bounded number of samples per frame with their
correspondences, so what it holds grows with frames × samples; the streaming pass holds the last
max(gaps) frames and one frame's flows; per-frame depth maps stay in RAM only up to
`store.depth_in_ram_gib` (else memory-mapped). The estimate is an upper bound (every correspondence
valid) and lets `track` refuse in one line instead of being killed mid-run.
"""

from __future__ import annotations

import logging
import os

from ..config import FrontendConfig
from ..errors import InputError
from .store import choose_stride, store_bytes, streaming_bytes

log = logging.getLogger(__name__)


def frontend_peak_bytes(num_frames: int, height: int, width: int, cfg: FrontendConfig) -> int:
    """Peak bytes of the front end: the store (twice while its records are sorted), the streaming window,
    and the depth maps where they stay in RAM."""
    stride = choose_stride(num_frames, height, width, cfg)
    depth = num_frames * height * width * 4
    depth_ram = depth if depth <= cfg.store.depth_in_ram_gib * 2**30 else 0
    return 2 * store_bytes(num_frames, height, width, stride, cfg) + streaming_bytes(height, width, cfg) + depth_ram


def available_bytes() -> int | None:
    """RAM available to new allocations (Linux MemAvailable), None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_frontend_memory(name: str, num_frames: int, height: int, width: int, cfg: FrontendConfig,
                          max_share: float) -> int:
    """The peak estimate in bytes; raises a one-line InputError when it is over `max_share` of the
    available RAM (`max_share` 0 never refuses)."""
    need = frontend_peak_bytes(num_frames, height, width, cfg)
    have = available_bytes()
    log.debug("%s: front end needs about %.1f GiB (%d frames of %dx%d)", name, need / 2**30, num_frames, width, height)
    if max_share > 0 and have is not None and need > max_share * have:
        raise InputError(
            f"{name}: the fit's front end needs about {need / 2**30:.1f} GiB for {num_frames} frames of "
            f"{width}x{height}, but {have / 2**30:.1f} GiB is available: lower frontend.store.budget_gib or raise "
            "frontend.store.sample_stride_px, or set frontend.max_memory_share: 0 to try anyway", reason="too_large")
    return need
