"""surg_invnerf_ros: Surg-InvNeRF tissue tracking for stereo endoscopy (ROS-free core + ROS 2 shell)."""

__version__ = "0.1.0"
