"""How a track file is scored (`eval/metrics.py`, `eval/evaluate.py`, DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import check_fields, option


@dataclass(frozen=True)
class TapVidConfig:
    """TAP-Vid metric semantics. The defaults are those of TAP-Vid's own evaluation
    (`compute_tapvid_metrics` on points sampled "query first"), except `size`: published TAP-Vid
    numbers are at 256×256, this project's at the sequence's own resolution unless `size` is set."""

    size: int = option(0, "Rescale pixel positions to size×size before δ, OA and AJ, as TAP-Vid's evaluation "
                       "does (256); 0 scores at the sequence's own resolution. EPE stays in native pixels.",
                       lo=0, hi=16384)
    never_visible: Literal["drop", "keep"] = option(
        "drop", "A ground-truth track visible in no frame: drop it (TAP-Vid's sampler never queries one), or keep "
        "it (its frames then count in OA and AJ, where a visible prediction is a false positive).")
    query_frame: Literal["first_visible", "queries"] = option(
        "first_visible", "Each point is scored on the frames after its query frame: its first visible frame "
        "(TAP-Vid's query-first), or the frame queries.csv gives it.")
    nan_visible: Literal["wrong", "occluded"] = option(
        "wrong", "A NaN position predicted visible: a wrong visible prediction (TAP-Vid), or taken as predicted "
        "occluded.")

    def __post_init__(self) -> None:
        check_fields(self, "tapvid.")
