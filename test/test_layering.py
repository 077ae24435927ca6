"""STYLE §2: a ROS-free core and a thin shell. Core modules import with rclpy and the message
packages blocked; nothing in ros/ imports torch (statically, or at import time)."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import surg_invnerf_ros

PKG = Path(surg_invnerf_ros.__file__).parent
ROS_ROOTS = {"rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "std_srvs", "visualization_msgs",
             "diagnostic_msgs", "tf2_msgs", "tf2_ros", "message_filters", "cv_bridge", "builtin_interfaces",
             "rcl_interfaces", "launch", "launch_ros"}


def modules(sub: str | None = None) -> list[str]:
    root = PKG / sub if sub else PKG
    prefix = f"surg_invnerf_ros.{sub}." if sub else "surg_invnerf_ros."
    out = []
    for m in pkgutil.walk_packages([str(root)], prefix):
        if not sub and m.name.startswith("surg_invnerf_ros.ros"):
            continue
        out.append(m.name)
    return sorted(out)


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every import statement in a file (also those inside functions)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"layering: {{name}} is blocked in the core")
sys.meta_path.insert(0, Block())
import importlib
for name in {mods!r}:
    importlib.import_module(name)
print("ok", len({mods!r}))
"""


def test_core_imports_without_ros():
    # cli wires the ROS commands lazily; __main__ runs it
    core = [m for m in modules() if m not in ("surg_invnerf_ros.cli", "surg_invnerf_ros.__main__")]
    assert "surg_invnerf_ros.online" in core and "surg_invnerf_ros.track" in core
    res = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=sorted(ROS_ROOTS), mods=core)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok")


def test_core_files_never_import_ros_packages():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith("ros/") or rel == "cli.py":
            continue
        bad = imported_roots(path) & ROS_ROOTS
        assert not bad, f"{rel} imports {sorted(bad)}"


def test_ros_layer_never_imports_torch():
    for path in sorted((PKG / "ros").glob("*.py")):
        assert "torch" not in imported_roots(path), f"ros/{path.name} imports torch"


def test_importing_the_ros_layer_loads_no_torch():
    pytest.importorskip("builtin_interfaces", reason="needs the ROS 2 message packages (pip install -e '.[pywheels]')")
    code = ("import importlib, sys\n"
            f"for m in {modules('ros')!r}: importlib.import_module(m)\n"
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False", "importing ros/ loaded torch"


def test_the_node_process_never_loads_torch_with_the_process_worker():
    """With refine.worker = process the fit (and torch) live in a child process."""
    code = ("import sys\n"
            "from surg_invnerf_ros.online import OnlineTracker\n"
            "from surg_invnerf_ros.config import RefineConfig\n"
            "t = OnlineTracker(refine_cfg=RefineConfig(enabled=False))\n"
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"
