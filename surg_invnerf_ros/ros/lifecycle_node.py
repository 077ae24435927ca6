"""ManagedTrackerNode (executable `track_lifecycle_node`): the tracker as a ROS 2 lifecycle node.

The same node as `track_node` (same name, parameters, topics and services), driven through the
standard lifecycle states (`ros2 lifecycle set /surg_invnerf_tracker <transition>`):

- **configure** (unconfigured → inactive): reads and checks the parameters (kinematics hand-eye and
  time offset included), creates the publishers, services, query inputs and /diagnostics, and starts
  the refine process (a bad parameter or an unusable device fails the transition with one logged
  line; the node stays unconfigured);
- **activate** (inactive → active): subscribes the stereo images, camera_info and ECM poses, starts
  the front end and refinement;
- **deactivate** (active → inactive): unsubscribes the images and poses and starts no new fit; the
  queries, their tracks, the keyframes and the model are kept, so activating again continues;
  queries may still be added and removed;
- **cleanup** (inactive → unconfigured): ends the refine process and releases every entity;
- **shutdown** (any → finalized): as cleanup.

Until it is configured the node has only its lifecycle services. `--autostart` (after the ROS
arguments, as `track_lifecycle_node --autostart --ros-args ...`) configures and activates it at
start-up; a failed autostart exits with code 2 like a plain node refusing to start.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.utilities import remove_ros_args

from ..errors import ConfigError
from .run import run_node
from .track_node import NODE_NAME, TrackerNode

FINAL_LINGER_S = 1.0  # spinning on after the shutdown transition, so its service answer is delivered


class ManagedTrackerNode(TrackerNode, LifecycleNode):
    """TrackerNode whose configure and activate steps are lifecycle transitions."""

    def __init__(self, *, context: Any = None, parameter_overrides: list | None = None,
                 cli_args: list[str] | None = None, frontend: Any = None, refiner: Any = None) -> None:
        """The node starts unconfigured: nothing but the lifecycle services (no parameters read yet).

        Args:
            frontend, refiner: injected OnlineTracker backends (tests); defaults otherwise.
        """
        self._create(context, parameter_overrides, cli_args, frontend, refiner)
        self.last_error = ""

    def _failed(self, step: str, err: Exception) -> TransitionCallbackReturn:
        self.last_error = str(err)
        self.get_logger().error(f"{step} failed: {err}")
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except ConfigError as err:
            self._cleanup()
            return self._failed("configure", err)
        self.get_logger().info("configured (inactive): parameters read, refine process started")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._activate()
        except ConfigError as err:
            self._deactivate()
            return self._failed("activate", err)
        self.get_logger().info("active: tracking")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self.get_logger().info(f"inactive: paused with {len(self._tracker.query_ids)} queries kept")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.get_logger().info("cleaned up (unconfigured)")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.node_state = "finalized"
        self.finalized_at = time.monotonic()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def autostart(self) -> None:
        """Configure and activate now.

        Raises:
            ConfigError: the transition that failed and why.
        """
        for step, trigger in (("configure", self.trigger_configure), ("activate", self.trigger_activate)):
            if trigger() != TransitionCallbackReturn.SUCCESS:
                raise ConfigError(f"{step}: {self.last_error or 'transition failed'}")


def main(args: list[str] | None = None) -> int:
    """Console script `track_lifecycle_node`: a managed tracker, unconfigured unless `--autostart`."""
    argv = list(sys.argv if args is None else args)
    extra = remove_ros_args(argv)[1:]
    unknown = [a for a in extra if a != "--autostart"]
    if unknown:
        print(f"track_lifecycle_node: unknown argument {unknown[0]!r} (expected --autostart, then --ros-args ...)",
              file=sys.stderr)
        return 2

    def build() -> ManagedTrackerNode:
        node = ManagedTrackerNode()
        if "--autostart" in extra:
            try:
                node.autostart()
            except ConfigError:
                node.destroy_node()
                raise
        return node

    # the shutdown transition ends the process (exit 0), as SIGINT/SIGTERM do, after a moment in which the
    # transition's answer reaches its caller (`ros2 lifecycle set` would report a lost one as a failure)
    def finalized(node: ManagedTrackerNode) -> bool:
        at = getattr(node, "finalized_at", None)
        return at is not None and time.monotonic() - at > FINAL_LINGER_S

    return run_node(build, argv, threads=1, close=lambda node: node.close(), done=finalized,
                    error_prefix=f"{NODE_NAME}: refusing to start", user_errors=(ConfigError,))


if __name__ == "__main__":
    sys.exit(main())
