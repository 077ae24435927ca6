"""Learnable per-frame corrections of kinematic camera poses (DESIGN §3.2 "Kinematics").

Kinematic poses of an endoscope carry errors of about a millimetre and a degree (joint encoders,
hand-eye, clock offset). With `fit.pose_refine` each frame t gets a small rigid correction dT_t,
initialised at the identity and pulled back towards it by a quadratic penalty, and the fit uses

    T_world_cam'(t) = T_world_cam(t) @ dT_t

The correction is right-multiplied, i.e. expressed in the camera frame of frame t: a rotation
about the optical centre and a shift along the camera's own axes. That is where kinematic error
lives (the hand-eye and the last joints sit next to the camera), its size does not depend on where
the world origin is, and it is the form the synthetic generator uses for its pose noise
(`published_pose = true_pose @ noise`), so a correction can undo that noise exactly.

Frame 0 defines the world (poses are relative to it, `track._relative_poses`), so its correction
is fixed at the identity. The parameters are kept in degrees and millimetres: one learning rate
then moves both by comparable amounts in the image (at ~75 mm working distance 1° of rotation
shifts the surface by ~1.3 mm), and the regulariser reads in those units.
"""

import math

import torch
from torch import Tensor, nn

from ..shapes import Float, Int


def hat(v: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3 3"]:
    """Skew-symmetric matrices [v]× with [v]× w = v × w."""
    z = torch.zeros_like(v[..., 0])
    x, y, w = v[..., 0], v[..., 1], v[..., 2]
    return torch.stack([torch.stack([z, -w, y], -1),
                        torch.stack([w, z, -x], -1),
                        torch.stack([-y, x, z], -1)], -2)


def rotvec_to_matrix(rotvec_rad: Float[Tensor, "*B 3"]) -> Float[Tensor, "*B 3 3"]:
    """Rodrigues' formula R = I + A [k]× + B [k]×² with A = sin θ/θ, B = (1 − cos θ)/θ², batched.

    Near θ = 0 the Taylor series of A and B keep the value and its gradient finite (the identity
    at init is exactly such a point, so this branch carries every first gradient).
    """
    theta2 = (rotvec_rad * rotvec_rad).sum(-1)  # (*B,)
    small = theta2 < 1e-8
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = safe2.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    K = hat(rotvec_rad)
    eye = torch.eye(3, dtype=rotvec_rad.dtype, device=rotvec_rad.device).expand_as(K)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def invert_rigid(T: Float[Tensor, "*B 4 4"]) -> Float[Tensor, "*B 4 4"]:
    """Closed-form inverse of rigid transforms: [Rᵀ, −Rᵀt] (exact, differentiable, no LU)."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


class PoseCorrection(nn.Module):
    """Per-frame se(3) corrections dT_t (axis-angle in degrees + translation in mm), zero at init.

    `forward(frame)` returns the (R, 4, 4) corrections of the given frames; `matrices()` those of
    every frame (the fit indexes that once per use, so the Rodrigues cost is per frame, not per ray).
    """

    free: Float[Tensor, "T 1"]  # buffer: 0 for frame 0 (held at the identity), 1 for the others

    def __init__(self, num_frames: int) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"PoseCorrection: num_frames must be >= 1, got {num_frames}")
        self.rot_deg = nn.Parameter(torch.zeros(num_frames, 3))
        self.trans_mm = nn.Parameter(torch.zeros(num_frames, 3))
        free = torch.ones(num_frames, 1)
        free[0] = 0.0  # frame 0 defines the world
        self.register_buffer("free", free)

    @property
    def num_frames(self) -> int:
        return int(self.rot_deg.shape[0])

    def deltas(self) -> tuple[Float[Tensor, "T 3"], Float[Tensor, "T 3"]]:
        """(rotation vectors in radians, translations in metres) with frame 0 held at zero."""
        return self.rot_deg * self.free * (math.pi / 180.0), self.trans_mm * self.free * 1e-3

    def matrices(self) -> Float[Tensor, "T 4 4"]:
        rot_rad, trans_m = self.deltas()
        T = torch.zeros(self.num_frames, 4, 4, dtype=rot_rad.dtype, device=rot_rad.device)
        T[:, :3, :3] = rotvec_to_matrix(rot_rad)
        T[:, :3, 3] = trans_m
        T[:, 3, 3] = 1.0
        return T

    def forward(self, frame: Int[Tensor, " R"]) -> Float[Tensor, "R 4 4"]:
        return self.matrices()[frame]

    def penalty(self) -> Tensor:
        """Mean over frames of ‖rotation‖²_deg² + ‖translation‖²_mm² (a Gaussian prior at the kinematics)."""
        rot = self.rot_deg * self.free
        trans = self.trans_mm * self.free
        return ((rot * rot).sum(-1) + (trans * trans).sum(-1)).mean()

    @torch.no_grad()
    def magnitudes(self) -> tuple[Float[Tensor, " T"], Float[Tensor, " T"]]:
        """Per-frame rotation angle (degrees) and translation norm (mm) of the corrections."""
        return (self.rot_deg * self.free).norm(dim=-1), (self.trans_mm * self.free).norm(dim=-1)

    def summary(self) -> dict[str, float | list[float]]:
        """Plain-Python magnitudes for `meta["pose_correction"]`."""
        rot, trans = (m.detach().cpu() for m in self.magnitudes())
        return {"max_rot_deg": float(rot.max()), "max_trans_mm": float(trans.max()),
                "mean_rot_deg": float(rot.mean()), "mean_trans_mm": float(trans.mean()),
                "rot_deg": [round(float(x), 5) for x in rot], "trans_mm": [round(float(x), 5) for x in trans]}
