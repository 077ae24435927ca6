"""launch/track.launch.py and the console script (DESIGN §5).

Without launch_ros (PyPI wheels) the launch file is read as an AST: every executable it starts must
be a console script of this package whose target imports, and every file it loads must exist and be
installed by setup.py. The tracker itself is started as a subprocess with the parameter file and
must publish, stop cleanly on SIGTERM, and refuse a bad parameter with one line and exit code 2.
"""

import ast
import importlib
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "track.launch.py"
PACKAGE = "surg_invnerf_ros"


def launch_nodes() -> list[dict[str, object]]:
    """Keyword arguments (literals only) of every Node(...) call in the launch file."""
    tree = ast.parse(LAUNCH.read_text())
    out = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) in ("Node", "LifecycleNode"):
            kw = {k.arg: k.value for k in call.keywords}
            out.append({k: (v.value if isinstance(v, ast.Constant) else (v.id if isinstance(v, ast.Name) else v))
                        for k, v in kw.items()})
    return out


def console_scripts() -> dict[str, str]:
    """name → 'module:function' from setup.py's entry_points (parsed, not executed)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    items = [e.value for e in v.elts if isinstance(e, ast.Constant)]
                    return {s.split("=")[0].strip(): s.split("=")[1].strip() for s in items}
    return {}


class TestLaunchFile:
    def test_arguments(self):
        text = LAUNCH.read_text()
        for arg in ("source", "bag", "rviz", "device", "use_sim_time", "lifecycle", "autostart"):
            assert f'("{arg}",' in text, f"launch argument {arg} missing"
        assert "synthetic | bag | live" in text

    def test_executables_are_console_scripts_of_the_package(self):
        ours = {n["executable"] for n in launch_nodes() if n.get("package") == "PACKAGE"}
        assert ours == {"track_node", "track_lifecycle_node", "synthetic_stereo", "bag_player"}
        scripts = console_scripts()
        for exe in sorted(ours):
            assert exe in scripts, f"setup.py: console_scripts lacks {exe}"
            module, func = scripts[exe].split(":")
            assert callable(getattr(importlib.import_module(module), func)), scripts[exe]

    def test_tracker_node_name(self):
        for exe in ("track_node", "track_lifecycle_node"):
            tracker = [n for n in launch_nodes() if n.get("executable") == exe][0]
            assert tracker["name"] == "surg_invnerf_tracker"

    def test_files_it_loads_exist_and_are_installed(self):
        text = LAUNCH.read_text()
        for rel in ("config/track.yaml", "config/track.rviz"):
            folder, name = rel.split("/")
            assert f'"{folder}", "{name}"' in text, f"launch file does not load {rel}"
            assert (REPO / rel).is_file(), rel
        setup = (REPO / "setup.py").read_text()
        for pattern in ('glob("launch/*.py")', 'glob("config/*.yaml")', 'glob("config/*.rviz")'):
            assert pattern in setup, f"setup.py data_files lacks {pattern}"

    def test_rviz_shows_the_outputs(self):
        import yaml

        rviz = yaml.safe_load((REPO / "config/track.rviz").read_text())
        displays = rviz["Visualization Manager"]["Displays"]
        topics = {d.get("Topic", {}).get("Value") for d in displays}
        for t in ("overlay", "tracked_points", "markers", "cloud"):
            assert f"/surg_invnerf_tracker/{t}" in topics
        assert "rviz_default_plugins/TF" in {d["Class"] for d in displays}

    def test_with_launch_ros(self):
        pytest.importorskip("launch_ros")
        spec = importlib.util.spec_from_file_location("track_launch", LAUNCH)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert len(mod.generate_launch_description().entities) >= 5


class _Stub:
    """Stands in for every launch / launch_ros class: records its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Stub):
    def perform(self, context):
        return context[self.args[0]]


def load_launch_with_stubs(monkeypatch) -> tuple[object, list[str]]:
    """The launch file executed against stub launch modules (no launch_ros needed); its warnings and errors."""
    import types

    warnings: list[str] = []
    names = {"launch": ["LaunchDescription"],
             "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction", "RegisterEventHandler",
                                "SetEnvironmentVariable", "Shutdown"],
             "launch.conditions": ["IfCondition", "UnlessCondition"], "launch.event_handlers": ["OnProcessExit"],
             "launch.substitutions": ["PathJoinSubstitution", "PythonExpression"],
             "launch.logging": [], "launch_ros": [], "launch_ros.actions": ["Node", "LifecycleNode"],
             "launch_ros.parameter_descriptions": ["ParameterValue"],
             "launch_ros.substitutions": ["FindPackageShare"]}
    for mod_name, classes in names.items():
        mod = types.ModuleType(mod_name)
        for cls in classes:
            setattr(mod, cls, type(cls, (_Stub,), {}))
        monkeypatch.setitem(sys.modules, mod_name, mod)
    sys.modules["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    sys.modules["launch.logging"].get_logger = lambda name: types.SimpleNamespace(warning=warnings.append,
                                                                                  error=warnings.append)
    spec = importlib.util.spec_from_file_location("track_launch_stubbed", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, warnings


class TestRvizOptional:
    """rviz:=true without rviz2 on PATH starts the rest and warns, instead of failing the whole launch."""

    def _run_rviz_action(self, monkeypatch, rviz: str, rviz2_path):
        mod, warnings = load_launch_with_stubs(monkeypatch)
        monkeypatch.setattr(mod.shutil, "which", lambda name: rviz2_path if name == "rviz2" else None)
        entities = mod.generate_launch_description().args[0]
        opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"
                  and e.kwargs["function"].__name__ == "_rviz"]
        assert len(opaque) == 1, "RViz must be decided at launch time by one OpaqueFunction"
        nodes = [e for e in entities if type(e).__name__ == "Node"]
        assert "track_node" in {n.kwargs["executable"] for n in nodes}, "the tracker must not depend on RViz"
        started = opaque[0].kwargs["function"]({"rviz": rviz}, *opaque[0].kwargs.get("args", []))
        return started, warnings

    def test_without_rviz2_starts_nothing_extra_and_warns(self, monkeypatch):
        started, warnings = self._run_rviz_action(monkeypatch, "true", None)
        assert started == []
        assert len(warnings) == 1 and "rviz2 is not on PATH" in warnings[0]

    def test_with_rviz2_starts_it_with_the_config(self, monkeypatch):
        started, warnings = self._run_rviz_action(monkeypatch, "true", "/opt/ros/jazzy/bin/rviz2")
        assert [n.kwargs["package"] for n in started] == ["rviz2"]
        assert started[0].kwargs["arguments"][0] == "-d"
        assert warnings == []

    def test_rviz_false_starts_nothing_silently(self, monkeypatch):
        started, warnings = self._run_rviz_action(monkeypatch, "false", None)
        assert started == [] and warnings == []


class TestLifecycleChoice:
    """lifecycle:=true starts the managed tracker instead of the plain one, with the same parameters."""

    def _entities(self, monkeypatch):
        mod, _ = load_launch_with_stubs(monkeypatch)
        entities = mod.generate_launch_description().args[0]
        plain = [e for e in entities if type(e).__name__ == "Node" and e.kwargs["executable"] == "track_node"][0]
        managed = [e for e in entities if type(e).__name__ == "OpaqueFunction"
                   and e.kwargs["function"].__name__ == "_managed_tracker"][0]
        return plain, managed

    @pytest.mark.parametrize("autostart,args", [("false", []), ("true", ["--autostart"])])
    def test_lifecycle_true(self, monkeypatch, autostart, args):
        plain, managed = self._entities(monkeypatch)
        assert type(plain.kwargs["condition"]).__name__ == "UnlessCondition"  # off when lifecycle:=true
        started = managed.kwargs["function"]({"lifecycle": "true", "autostart": autostart}, *managed.kwargs["args"])
        node, handler = started
        assert type(node).__name__ == "LifecycleNode" and node.kwargs["executable"] == "track_lifecycle_node"
        assert node.kwargs["parameters"] is plain.kwargs["parameters"] and node.kwargs["arguments"] == args
        assert handler.args[0].kwargs["target_action"] is node  # its error exit shuts the launch down too

    def test_lifecycle_false_starts_no_managed_node(self, monkeypatch):
        _, managed = self._entities(monkeypatch)
        assert managed.kwargs["function"]({"lifecycle": "false", "autostart": "true"}, *managed.kwargs["args"]) == []


class TestShutdownOnTrackerError:
    """A tracker that exits non-zero (e.g. device:=cuda without a GPU: exit 2) shuts the launch down."""

    def _handler(self, monkeypatch):
        mod, log = load_launch_with_stubs(monkeypatch)
        entities = mod.generate_launch_description().args[0]
        handlers = [e for e in entities if type(e).__name__ == "RegisterEventHandler"]
        assert len(handlers) == 1, "one event handler on the tracker's exit"
        on_exit = handlers[0].args[0] if handlers[0].args else handlers[0].kwargs["event_handler"]
        assert type(on_exit).__name__ == "OnProcessExit"
        target = on_exit.kwargs["target_action"]
        assert type(target).__name__ == "Node" and target.kwargs["executable"] == "track_node"
        return on_exit.kwargs["on_exit"], log

    @pytest.mark.parametrize("code", [2, 1, -9])
    def test_error_exit_shuts_down(self, monkeypatch, code):
        on_exit, log = self._handler(monkeypatch)
        actions = list(on_exit(types.SimpleNamespace(returncode=code), {}))
        assert [type(a).__name__ for a in actions] == ["Shutdown"]
        assert f"code {code}" in actions[0].kwargs["reason"]
        assert len(log) == 1 and f"exited with code {code}" in log[0]

    def test_clean_exit_leaves_the_rest_running(self, monkeypatch):
        on_exit, log = self._handler(monkeypatch)
        assert not on_exit(types.SimpleNamespace(returncode=0), {})
        assert log == []

    def test_with_launch(self):
        """With the real launch package: the handler's actions are launch's Shutdown."""
        pytest.importorskip("launch")
        pytest.importorskip("launch_ros")
        from launch.actions import Shutdown

        spec = importlib.util.spec_from_file_location("track_launch_exit", LAUNCH)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert isinstance(mod._on_tracker_exit(types.SimpleNamespace(returncode=2), None)[0], Shutdown)


def tracker_cmd(*ros_args: str) -> list[str]:
    return [sys.executable, "-m", "surg_invnerf_ros.ros.track_node", "--ros-args", *ros_args]


class TestConsoleScript:
    def test_starts_with_the_parameter_file_publishes_and_stops_on_sigterm(self):
        env = dict(os.environ, FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA")
        proc = subprocess.Popen(
            tracker_cmd("--params-file", str(REPO / "config/track.yaml"), "-p", "refine.enabled:=false",
                        "-p", "publish.diagnostics_rate_hz:=5.0"),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        try:
            node = rclpy.create_node("launch_test_listener", context=ctx)
            got = []
            node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
            ex = SingleThreadedExecutor(context=ctx)
            ex.add_node(node)
            t0 = time.monotonic()
            while not any(s.name.startswith("surg_invnerf_tracker") for m in got for s in m.status):
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() - t0 < 20, "no /diagnostics from the tracker within 20 s"
                ex.spin_once(timeout_sec=0.05)
            topics = dict(node.get_topic_names_and_types())
            assert "sensor_msgs/msg/PointCloud2" in topics.get("/surg_invnerf_tracker/tracked_points", [])
            ex.shutdown()
            node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, out
        assert "waiting for queries on /surg_invnerf_tracker/queries" in out
        assert "Traceback" not in out

    @pytest.mark.parametrize("arg,line", [
        ("device:=gpu", "surg_invnerf_tracker: refusing to start: device: expected one of auto|cpu|cuda, got 'gpu'"),
        ("sync.max_rate_hz:=-1.0", "surg_invnerf_tracker: refusing to start: sync.max_rate_hz: expected >= 0.0"),
    ])
    def test_bad_parameter_refuses_start(self, arg, line):
        res = subprocess.run(tracker_cmd("-p", arg), capture_output=True, text=True, timeout=30)
        assert res.returncode == 2
        assert res.stderr.strip().startswith(line)
        assert len(res.stderr.strip().splitlines()) == 1
