"""How much RAM the fit's front end needs, checked before it starts.

The flow bank and the dense correspondences are whole-image arrays per frame pair, so they grow
with frames × pixels × gaps: a long or full-resolution clip (STIR is 1280×1024) can need more than
the machine has, and an out-of-memory kill mid-run tells the user nothing. The estimate is exact
for the pair counts (`long_range_pairs` mirrors `chains.build_correspondences`) and counts the peak,
when the bank and the correspondences coexist.
"""

from __future__ import annotations

import logging
import os

from ..config import FlowConfig
from ..errors import InputError
from .flow import gap_pairs

log = logging.getLogger(__name__)

BANK_BYTES_PER_PX = 13  # float32 flow (8), float32 cycle error (4), bool valid (1)
CORR_BYTES_PER_PX = 12  # float32 flow (8), float32 confidence (4)


def long_range_pairs(num_frames: int, cfg: FlowConfig) -> set[tuple[int, int]]:
    """The keyframe pairs `build_correspondences` adds beyond the direct gap pairs (its rules:
    keyframes every `keyframe_stride`, distances every `long_range_step` up to `max_chain_frames`,
    both ways), assuming every chain reaches (true whenever gap 1 is in the bank)."""
    direct = {(int(i), int(j)) for i, j in gap_pairs(num_frames, cfg.gaps)}
    keep = [d for d in range(cfg.long_range_step, cfg.max_chain_frames + 1, cfg.long_range_step) if d > 1]
    out: set[tuple[int, int]] = set()
    for r in range(0, num_frames, cfg.keyframe_stride):
        for t in (r + s * d for d in keep for s in (1, -1)):
            if 0 <= t < num_frames:
                out |= {(r, t), (t, r)} - direct
    return out


def frontend_peak_bytes(num_frames: int, height: int, width: int, cfg: FlowConfig) -> int:
    """Peak bytes of the flow bank plus the dense correspondences built from it."""
    pixels = height * width
    direct = len(gap_pairs(num_frames, cfg.gaps))
    total = direct + len(long_range_pairs(num_frames, cfg))
    return pixels * (direct * BANK_BYTES_PER_PX + total * CORR_BYTES_PER_PX)


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


def check_frontend_memory(name: str, num_frames: int, height: int, width: int, cfg: FlowConfig,
                          max_share: float) -> int:
    """The peak estimate in bytes; raises a one-line InputError when it is over `max_share` of the
    available RAM (`max_share` 0 never refuses)."""
    need = frontend_peak_bytes(num_frames, height, width, cfg)
    have = available_bytes()
    log.debug("%s: front end needs about %.1f GiB (%d frames of %dx%d)", name, need / 2**30, num_frames, width, height)
    if max_share > 0 and have is not None and need > max_share * have:
        raise InputError(
            f"{name}: the fit's front end needs about {need / 2**30:.1f} GiB for {num_frames} frames of "
            f"{width}x{height} with flow gaps {list(cfg.gaps)}, but {have / 2**30:.1f} GiB is available: "
            "use fewer frames (e.g. stir-import --max-frames), a smaller image, fewer frontend.flow.gaps, "
            "or frontend.max_memory_share: 0 to try anyway", reason="too_large")
    return need
