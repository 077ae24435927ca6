"""A ROS-free core, a thin ROS shell and apps on top.

Core modules import with rclpy and the message packages blocked; nothing in ros/ imports torch
(statically, or at import time); the core never imports the shell or the apps; there is no import
cycle between modules or between packages; and no import hides inside a function unless it is an
optional dependency (the ROS 2 wheels, torch kept out of the node process, plotting, Ray)."""

import ast
import graphlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import surg_invnerf_ros

PKG = Path(surg_invnerf_ros.__file__).parent
ROS_ROOTS = {"rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "std_srvs", "visualization_msgs",
             "diagnostic_msgs", "tf2_msgs", "tf2_ros", "message_filters", "cv_bridge", "builtin_interfaces",
             "rcl_interfaces", "rosgraph_msgs", "launch", "launch_ros", "surg_invnerf_msgs"}


#: The apps that drive the ROS shell (they may import rclpy at module level).
ROS_APPS = {"apps/ros_bench.py", "apps/demo_pipeline.py"}
#: Roots a function may import lazily: optional extras, and torch (kept out of the node process).
OPTIONAL_ROOTS = ROS_ROOTS | {"rosbags", "torch", "matplotlib", "ray"}


def modules(sub: str | None = None) -> list[str]:
    """Core modules (no ros/, no apps/) or those of one subpackage."""
    root = PKG / sub if sub else PKG
    prefix = f"surg_invnerf_ros.{sub}." if sub else "surg_invnerf_ros."
    out = []
    for m in pkgutil.walk_packages([str(root)], prefix):
        if not sub and m.name.startswith(("surg_invnerf_ros.ros", "surg_invnerf_ros.apps")):
            continue
        out.append(m.name)
    return sorted(out)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


ALL = {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(absolute module, line, inside a function) of every import in a file; `from pkg import mod`
    names the submodule when `mod` is one."""
    mod = module_name(path)
    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    tree = ast.parse(path.read_text())
    in_function: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        lazy = id(node) in in_function
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, lazy) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = base[: len(base) - (node.level - 1)]
                target = ".".join(up + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in ALL]
            out += [(t, node.lineno, lazy) for t in subs] if subs else [(target, node.lineno, lazy)]
    return out


def internal_graph(level: str) -> dict[str, set[str]]:
    """Module-level imports inside the package, per module or per package (first component below
    surg_invnerf_ros; a top-level module is its own package)."""
    def key(name: str) -> str:
        if level == "module":
            return name
        parts = name.split(".")
        return ".".join(parts[:2])

    graph: dict[str, set[str]] = {}
    for name, path in ALL.items():
        deps = graph.setdefault(key(name), set())
        for target, _, lazy in imports_of(path):
            if lazy or not target.startswith("surg_invnerf_ros."):
                continue
            while target not in ALL and "." in target:  # `from .x import name` of a non-module name
                target = target.rsplit(".", 1)[0]
            if key(target) != key(name) and not (level == "module" and name.startswith(target + ".")):
                deps.add(key(target))
    return graph


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycles(level):
    try:
        graphlib.TopologicalSorter(internal_graph(level)).prepare()
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle between {level}s: {' -> '.join(err.args[1])}")


def test_no_imports_hidden_in_functions_but_optional_ones():
    bad = []
    for _name, path in sorted(ALL.items()):
        for target, line, lazy in imports_of(path):
            if not lazy or target.split(".")[0] in OPTIONAL_ROOTS:
                continue
            if target.startswith(("surg_invnerf_ros.ros", "surg_invnerf_ros.apps.ros_bench",
                                  "surg_invnerf_ros.apps.demo_pipeline")):
                continue  # the ROS shell is optional for the offline apps
            if target.startswith("surg_invnerf_ros.") and torch_at_import(target):
                continue  # keeps torch out of processes that do not fit (the node)
            bad.append(f"{path.relative_to(PKG)}:{line} imports {target} inside a function")
    assert not bad, "\n".join(bad)


def torch_at_import(module: str) -> bool:
    """Whether importing `module` loads torch (its module-level imports, followed inside the package)."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        while m not in ALL and "." in m:
            m = m.rsplit(".", 1)[0]
        if m in seen or m not in ALL:
            continue
        seen.add(m)
        for target, _, lazy in imports_of(ALL[m]):
            if lazy:
                continue
            if target.split(".")[0] == "torch":
                return True
            if target.startswith("surg_invnerf_ros."):
                todo.append(target)
    return False


def test_the_core_never_imports_the_shell_or_the_apps():
    bad = []
    for name, path in sorted(ALL.items()):
        if name.startswith(("surg_invnerf_ros.ros", "surg_invnerf_ros.apps")) or name == "surg_invnerf_ros.__main__":
            continue
        for target, line, _ in imports_of(path):
            if target.startswith(("surg_invnerf_ros.ros", "surg_invnerf_ros.apps")):
                bad.append(f"{path.relative_to(PKG)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_the_shell_never_imports_the_apps():
    bad = [f"{path.relative_to(PKG)}:{line} imports {target}" for name, path in sorted(ALL.items())
           if name.startswith("surg_invnerf_ros.ros") for target, line, _ in imports_of(path)
           if target.startswith("surg_invnerf_ros.apps")]
    assert not bad, "\n".join(bad)


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
    core = [m for m in modules() if m not in ("surg_invnerf_ros.apps.cli", "surg_invnerf_ros.__main__")]
    assert "surg_invnerf_ros.online" in core and "surg_invnerf_ros.track" in core
    res = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=sorted(ROS_ROOTS), mods=core)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok")


def test_core_files_never_import_ros_packages():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith("ros/") or rel in ROS_APPS:
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


def test_the_public_api_is_what_the_package_exports():
    import surg_invnerf_ros as pkg

    assert sorted(pkg.__all__) == sorted(pkg._LAZY)
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None
