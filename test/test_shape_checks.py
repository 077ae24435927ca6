"""The jaxtyping shape annotations of model/, fit/ and track.py are checked (beartype) in the tests.

The pytest configuration (`addopts` in setup.cfg) installs jaxtyping's import hook over these
packages. Each call below runs without error when unchecked, so it fails if the hook is not live.
"""

import numpy as np
import pytest
import torch
from jaxtyping import TypeCheckError

from surg_invnerf_ros import track
from surg_invnerf_ros.fit import losses
from surg_invnerf_ros.fit.optimiser import CorrespondenceBatch
from surg_invnerf_ros.model.render import volume_weights
from surg_invnerf_ros.model.workspace import Workspace


def test_model_function_rejects_a_wrong_shape():
    # step_scale must be (R, 1) with the rays' R = 2; (1, 1) broadcasts fine but breaks the contract
    with pytest.raises(TypeCheckError):
        volume_weights(torch.ones(2, 3), torch.rand(2, 3), torch.ones(1, 1))


def test_model_method_rejects_a_wrong_shape():
    ws = Workspace(torch.zeros(3), torch.ones(3))
    with pytest.raises(TypeCheckError):
        ws.to_norm(torch.zeros(4, 1))  # (4, 1) broadcasts against the (3,) box, but points are (*B, 3)


def test_fit_function_rejects_a_wrong_shape():
    with pytest.raises(TypeCheckError):
        losses.range_loss(torch.zeros(4, 2))


def test_fit_batch_rejects_mismatched_fields():
    with pytest.raises(TypeCheckError):
        n = torch.zeros(3, dtype=torch.long)
        CorrespondenceBatch(frame_i=n, uv_i_px=torch.zeros(3, 2), depth_i_m=torch.zeros(3), rgb_i=torch.zeros(3, 3),
                            sup_i=torch.ones(3, dtype=torch.bool), frame_j=n, uv_j_px=torch.zeros(4, 2),
                            depth_j_m=torch.zeros(3), rgb_j=torch.zeros(3, 3), sup_j=torch.ones(3, dtype=torch.bool),
                            conf=torch.ones(3))


def test_track_result_rejects_mismatched_fields():
    with pytest.raises(TypeCheckError):
        track.InferredPoints(uv_px=np.zeros((2, 3, 2), np.float32), visible=np.zeros((2, 3), bool),
                             xyz_cam_m=np.zeros((2, 4, 3), np.float32))


def test_a_correct_call_passes():
    w, trans = volume_weights(torch.ones(2, 3), torch.rand(2, 3).sort(-1).values, torch.ones(2, 1))
    assert w.shape == trans.shape == (2, 3)
