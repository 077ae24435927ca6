"""Tracker + a stereo source + optional RViz (DESIGN §5).

    ros2 launch surg_invnerf_ros track.launch.py                      # synthetic endoscope
    ros2 launch surg_invnerf_ros track.launch.py source:=bag bag:=/path/to/bag use_sim_time:=true
    ros2 launch surg_invnerf_ros track.launch.py source:=live rviz:=true device:=cuda
    ros2 launch surg_invnerf_ros track.launch.py lifecycle:=true    # then: ros2 lifecycle set ...

source:=live starts only the tracker: remap your camera's rectified topics to stereo/left/image_rect,
stereo/right/image_rect, stereo/left/camera_info and stereo/right/camera_info. rviz:=true needs rviz2
(a ROS install: ros-$ROS_DISTRO-rviz2); when rviz2 is not on PATH the rest starts and a warning says
RViz was skipped. lifecycle:=true starts the managed tracker (track_lifecycle_node) unconfigured:
`ros2 lifecycle set /surg_invnerf_tracker configure`, then `activate` (or autostart:=true does both).
When the tracker exits with an error (a bad parameter, device:=cuda without a
GPU: exit code 2) the whole launch shuts down. Without a ROS install
(PyPI wheels, no launch_ros) run the console scripts instead:
    track_node --ros-args --params-file config/track.yaml
"""

import shutil

from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable, Shutdown
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.logging import get_logger
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

PACKAGE = "surg_invnerf_ros"

# name, default, description, choices (None: free text): the one argument table
ARGUMENTS = [
    ("source", "synthetic", "Stereo source: synthetic | bag | live (live: only the tracker).",
     ["synthetic", "bag", "live"]),
    ("bag", "", "Bag folder (MCAP or sqlite3) for source:=bag.", None),
    ("rviz", "false", "Start RViz with config/track.rviz: true | false.", ["true", "false"]),
    ("device", "auto", "Model device of the tracker: auto | cpu | cuda.", ["auto", "cpu", "cuda"]),
    ("use_sim_time", "false", "Follow /clock (with source:=bag the player publishes it).", ["true", "false"]),
    ("lifecycle", "false", "Start the tracker as a lifecycle (managed) node: true | false.", ["true", "false"]),
    ("autostart", "false", "With lifecycle:=true, configure and activate it at once: true | false.",
     ["true", "false"]),
]


def _source_is(name: str) -> IfCondition:
    return IfCondition(PythonExpression(["'", LaunchConfiguration("source"), f"' == '{name}'"]))


def _rviz(context, share, sim_time) -> list:
    """RViz with config/track.rviz when rviz:=true and rviz2 is on PATH; else nothing (warned)."""
    if LaunchConfiguration("rviz").perform(context).lower() != "true":
        return []
    if shutil.which("rviz2") is None:
        get_logger("track.launch").warning(
            "rviz:=true but rviz2 is not on PATH (it comes with a ROS install: ros-$ROS_DISTRO-rviz2); "
            "starting without RViz")
        return []
    return [Node(package="rviz2", executable="rviz2", name="rviz2", output="log",
                 arguments=["-d", PathJoinSubstitution([share, "config", "track.rviz"])], parameters=[sim_time])]


def _on_tracker_exit(event, context) -> list:
    """The tracker exited: a non-zero code (it refused to start, or failed) shuts the launch down."""
    if event.returncode == 0:
        return []
    get_logger("track.launch").error(f"the tracker exited with code {event.returncode}; shutting down the launch")
    return [Shutdown(reason=f"track_node exited with code {event.returncode}")]


def _managed_tracker(context, tracker_params) -> list:
    """lifecycle:=true: the managed tracker (unconfigured, or configured and active with autostart:=true)."""
    if LaunchConfiguration("lifecycle").perform(context).lower() != "true":
        return []
    autostart = LaunchConfiguration("autostart").perform(context).lower() == "true"
    managed = LifecycleNode(package=PACKAGE, executable="track_lifecycle_node", name="surg_invnerf_tracker",
                            namespace="", output="screen", parameters=tracker_params,
                            arguments=["--autostart"] if autostart else [])
    return [managed, RegisterEventHandler(OnProcessExit(target_action=managed, on_exit=_on_tracker_exit))]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    use_sim_time = LaunchConfiguration("use_sim_time")
    sim_time = {"use_sim_time": ParameterValue(use_sim_time, value_type=bool)}
    tracker_params = [PathJoinSubstitution([share, "config", "track.yaml"]),
                      {"device": ParameterValue(LaunchConfiguration("device"), value_type=str)}, sim_time]

    tracker = Node(
        package=PACKAGE, executable="track_node", name="surg_invnerf_tracker", output="screen",
        parameters=tracker_params, condition=UnlessCondition(LaunchConfiguration("lifecycle")),
    )
    synthetic = Node(
        package=PACKAGE, executable="synthetic_stereo", name="synthetic_stereo", output="screen",
        parameters=[sim_time],
        # the source's queries (ids shared with its ~/ground_truth) go straight to the tracker
        remappings=[("queries_out", "/surg_invnerf_tracker/queries")],
        condition=_source_is("synthetic"),
    )
    bag_player = Node(
        package=PACKAGE, executable="bag_player", name="bag_player", output="screen",
        parameters=[{"bag": ParameterValue(LaunchConfiguration("bag"), value_type=str),
                     "clock": ParameterValue(use_sim_time, value_type=bool)}],
        condition=_source_is("bag"),
    )
    rviz = OpaqueFunction(function=_rviz, args=[share, sim_time])
    managed = OpaqueFunction(function=_managed_tracker, args=[tracker_params])
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=desc, **({"choices": ch} if ch else {}))
         for name, default, desc, ch in ARGUMENTS]
        # Fast DDS's default transports stall small topics behind images (ROS_STACK.md Q4)
        + [SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA"),
           tracker, managed, synthetic, bag_player, rviz,
           RegisterEventHandler(OnProcessExit(target_action=tracker, on_exit=_on_tracker_exit))]
    )
