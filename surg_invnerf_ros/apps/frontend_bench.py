"""Front-end throughput on random texture (DESIGN §3.4 style: speed only, says nothing of accuracy).

`frontend_fps` times, on a drifting random texture with a constant stereo disparity: LK tracking of
64 points (chained and from the query frame), the DIS flow bank, the correspondence store (stereo,
flows and chains in one streaming pass), and SGBM depth with its left-right check. `make bench` calls it at 256×192 and 640×512.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from ..config import FrontendConfig
from ..frontend.flow import compute_flow_bank
from ..frontend.lk import track_lk
from ..frontend.stereo import stereo_depth_sequence_m
from ..frontend.store import build_store
from ..structs import Queries, StereoCalib


def random_stereo_video(
    width: int, height: int, frames: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, StereoCalib]:
    """(T, H, W, 3) left and right uint8 views of a blurred-noise texture drifting ~1 px a frame,
    seen at a constant disparity of width/16 px; plus a matching calibration."""
    rng = np.random.default_rng(seed)
    margin = 8 + frames * 2
    tex = cv2.GaussianBlur(rng.random((height + 2 * margin, width + 2 * margin, 3)).astype(np.float32), (0, 0), 1.5)
    tex = (255 * (tex - tex.min()) / np.ptp(tex)).astype(np.float32)
    disp_px = width / 16.0
    left, right = [], []
    for t in range(frames):
        du, dv = 1.0 * t + 0.5 * np.sin(t / 3.0), 0.5 * t
        for out, extra in ((left, 0.0), (right, disp_px)):
            # dst(x) = tex(x + margin - du + extra): the right view sees x at x - disp_px.
            M = np.array([[1, 0, -(margin - du + extra)], [0, 1, -(margin - dv)]], dtype=np.float32)
            out.append(np.clip(cv2.warpAffine(tex, M, (width, height), flags=cv2.INTER_LINEAR), 0, 255))
    fx = 0.9 * width
    K = np.array([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1.0]])
    calib = StereoCalib(K=K, baseline_m=0.0045, image_size=(width, height))
    return (np.stack(left).astype(np.uint8), np.stack(right).astype(np.uint8), calib)


def frontend_fps(width: int, height: int, frames: int = 24, cfg: FrontendConfig | None = None) -> dict:
    """Frames per second of each front-end stage at one image size.

    Returns:
        {"width", "height", "frames", "cv2_threads", "lk_64pts_fps", "lk_query_64pts_fps",
         "dis_bank_fps", "store_fps", "sgbm_fps"}: frames processed per wall-clock second.
    """
    cfg = cfg or FrontendConfig()
    left, right, calib = random_stereo_video(width, height, frames)
    rng = np.random.default_rng(1)
    n = 64
    uv = np.stack([rng.uniform(0.1, 0.9, n) * (width - 1), rng.uniform(0.1, 0.9, n) * (height - 1)], -1)
    queries = Queries(ids=np.arange(n), query_tuv=np.concatenate([np.zeros((n, 1)), uv], -1))

    def fps(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return frames / max(time.perf_counter() - t0, 1e-9)

    out: dict = {"width": width, "height": height, "frames": frames, "cv2_threads": cv2.getNumThreads()}
    out["lk_64pts_fps"] = fps(lambda: track_lk(left, queries, cfg.lk, "chained"))
    out["lk_query_64pts_fps"] = fps(lambda: track_lk(left, queries, cfg.lk, "from_query"))
    holder = {}
    out["dis_bank_fps"] = fps(lambda: holder.setdefault("bank", compute_flow_bank(left, cfg.flow, workers=cfg.workers)))
    out["store_fps"] = fps(lambda: build_store(left, right, calib, cfg))
    holder.clear()
    out["sgbm_fps"] = fps(lambda: stereo_depth_sequence_m(left, right, calib, cfg.stereo, workers=cfg.workers))
    return out
