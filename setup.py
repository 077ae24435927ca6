"""ament_python package that is also a plain pip package (extras: pywheels, test)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "surg_invnerf_ros"

# The PyPI ROS 2 (Kilted) wheels, pinned exactly: the tf2_msgs interface wheel links against them.
PYWHEELS = [
    "ros-rclpy[fastrtps]==9.1.2",
    "ros-sensor-msgs==5.5.1",
    "ros-geometry-msgs==5.5.1",
    "ros-visualization-msgs==5.5.1",
    "ros-std-msgs==5.5.1",
    "ros-std-srvs==5.5.1",
    "ros-diagnostic-msgs==5.5.1",
    "ros-stereo-msgs==5.5.1",
    "rosbags>=0.11.9",
]

setup(
    name=PACKAGE,
    version="0.7.7",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "setuptools",
        "numpy",
        "scipy",
        "pyyaml",
        "opencv-contrib-python-headless",
        "tqdm",
        "matplotlib",
        "torch>=2.1",
        "jaxtyping",
    ],
    extras_require={
        "pywheels": PYWHEELS,
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "ruff", "pyright[nodejs]", "beartype"],
        # batches of clips on a Ray cluster (stir-bench --backend ray)
        "ray": ["ray>=2.9"],
    },
    zip_safe=True,
    maintainer="surg_invnerf_ros developers",
    maintainer_email="surg-invnerf@example.org",
    description="Surg-InvNeRF: invertible-NeRF tissue tracking for stereo endoscopy, with a ROS 2 node.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "surg-invnerf = surg_invnerf_ros.apps.cli:main",
            "synthetic_stereo = surg_invnerf_ros.ros.synthetic_source_node:main",
            "bag_player = surg_invnerf_ros.ros.bag_nodes:player_main",
            "track_node = surg_invnerf_ros.ros.track_node:main",
            "track_lifecycle_node = surg_invnerf_ros.ros.lifecycle_node:main",
        ],
    },
)
