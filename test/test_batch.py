"""batch.py: jobs run locally or on Ray, failures reported per job, Ray absent in one line."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from surg_invnerf_ros.batch import Task, run_batch
from surg_invnerf_ros.errors import ConfigError


def square(x):
    return x * x


def fail_on_two(x):
    if x == 2:
        raise ValueError(f"bad input {x}\nsecond line")
    return x + 100


def worker_pid(_):
    return os.getpid()


class TestLocal:
    def test_results_in_task_order_and_a_failure_does_not_stop_the_others(self):
        seen = []
        res = run_batch([Task(f"t{i}", fail_on_two, (i,)) for i in range(4)], "local", progress=seen.append)
        assert [r.name for r in res] == ["t0", "t1", "t2", "t3"] == [r.name for r in seen]
        assert [r.ok for r in res] == [True, True, False, True]
        assert [r.value for r in res] == [100, 101, None, 103]
        assert res[2].error == "ValueError: bad input 2" and "Traceback" in res[2].detail
        assert all(r.seconds >= 0 for r in res)

    def test_unknown_backend(self):
        with pytest.raises(ConfigError, match="--backend: expected local or ray"):
            run_batch([Task("a", square, (1,))], "dask")  # type: ignore[arg-type]


class TestRay:
    def test_ray_absent_is_one_line_naming_the_extra(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
        with pytest.raises(ConfigError, match=r"Ray is not installed: pip install '\.\[ray\]'"):
            run_batch([Task("a", square, (3,))], "ray")

    def test_tasks_run_in_ray_workers_with_the_same_results(self):
        pytest.importorskip("ray")
        tasks = [Task(f"t{i}", fail_on_two, (i,), num_cpus=1) for i in range(4)]
        local = run_batch(tasks, "local")
        on_ray = run_batch(tasks, "ray", num_cpus=2)
        assert [(r.name, r.ok, r.value, r.error) for r in on_ray] == [(r.name, r.ok, r.value, r.error) for r in local]
        pids = run_batch([Task(f"p{i}", worker_pid, (i,)) for i in range(2)], "ray", num_cpus=2)
        assert all(r.ok and r.value != os.getpid() for r in pids), "ray tasks must run in worker processes"


class _FakeRay:
    """Records what run_batch asks of Ray: the cluster address and each task's CPU/GPU request."""

    def __init__(self):
        self.init_kwargs, self.requests, self.shut = None, [], False
        self._init = False

    def is_initialized(self):
        return self._init

    def init(self, **kw):
        self.init_kwargs, self._init = kw, True

    def remote(self, fn):
        fake = self

        class _Remote:
            def options(self, **opts):
                fake.requests.append(opts)
                return self

            def remote(self, f, args):
                return (fn, f, args)

        return _Remote()

    def wait(self, pending, num_returns=1):
        return pending[:1], pending[1:]

    def get(self, ref):
        fn, f, args = ref
        return fn(f, args)

    def shutdown(self):
        self.shut = True


class TestRayWiring:
    def test_joins_the_given_cluster_with_each_tasks_request(self, monkeypatch):
        fake = _FakeRay()
        monkeypatch.setitem(sys.modules, "ray", fake)
        tasks = [Task("gpu", square, (3,), num_cpus=2, num_gpus=1.0), Task("cpu", square, (4,), num_cpus=1)]
        res = run_batch(tasks, "ray", ray_address="ray://head:10001")
        assert fake.init_kwargs["address"] == "ray://head:10001" and "num_cpus" not in fake.init_kwargs
        assert [(r["num_cpus"], r["num_gpus"]) for r in fake.requests] == [(2, 1.0), (1, 0.0)]
        assert [(r.name, r.value) for r in res] == [("gpu", 9), ("cpu", 16)] and fake.shut

    def test_without_an_address_starts_a_local_ray_of_the_given_size(self, monkeypatch):
        fake = _FakeRay()
        monkeypatch.setitem(sys.modules, "ray", fake)
        run_batch([Task("a", square, (2,))], "ray", num_cpus=2)
        assert fake.init_kwargs["num_cpus"] == 2
        assert fake.init_kwargs["address"] == "local", "a `ray start` cluster on this machine must not capture it"


def test_a_cluster_that_cannot_be_joined_is_one_line_naming_the_address(monkeypatch):
    fake = _FakeRay()

    def refuse(**kw):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379")

    fake.init = refuse
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(ConfigError, match=r"--ray-address 10\.0\.0\.9:6379: cannot join the Ray cluster \(Failed"):
        run_batch([Task("a", square, (2,))], "ray", ray_address="10.0.0.9:6379")


def test_a_token_refusal_says_what_to_set(monkeypatch):
    fake = _FakeRay()

    def refuse(**kw):
        try:
            raise RuntimeError("Failed to connect to GCS. AuthenticationError: RPC error: InvalidAuthToken")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379") from inner

    fake.init = refuse
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(ConfigError, match=r"10\.0\.0\.9:6379: .*token authentication: set RAY_AUTH_MODE=token") as e:
        run_batch([Task("a", square, (2,))], "ray", ray_address="10.0.0.9:6379")
    assert "\n" not in str(e.value)


@pytest.fixture(scope="class")
def ray_head():
    """A real `ray start --head` of 2 CPUs on a free port, in its own temp dir (so no other Ray on this
    machine finds it), stopped with its whole process group afterwards. Yields its "HOST:PORT"."""
    pytest.importorskip("ray")
    exe = Path(sys.executable).with_name("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray puts unix sockets under it
    log = open(Path(tmp) / "head.log", "w")
    proc = subprocess.Popen([str(exe), "start", "--head", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--temp-dir", tmp, "--block", "--disable-usage-stats"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in (Path(tmp) / "head.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (Path(tmp) / "head.log").read_text()[-2000:]
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:  # it drains for up to 30 s after a refused driver; nothing to keep

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


JOIN = """
import sys
from surg_invnerf_ros.batch import Task, run_batch
from surg_invnerf_ros.errors import ConfigError
from test.test_batch import fail_on_two
try:
    res = run_batch([Task(f"t{i}", fail_on_two, (i,), num_cpus=1) for i in range(4)], "ray", ray_address=sys.argv[1])
except ConfigError as err:
    print("ConfigError:", err)
    sys.exit(2)
print(repr([(r.name, r.ok, r.value, r.error) for r in res]))
"""


def join_in_a_new_process(address: str, auth_mode: str | None) -> subprocess.CompletedProcess:
    """run_batch against `address` from a fresh interpreter (Ray reads RAY_AUTH_MODE once per process).
    A refused join is tried once, not for Ray's default 10 s."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    if auth_mode is not None:
        env["RAY_AUTH_MODE"] = auth_mode
    else:
        env["RAY_gcs_server_port_wait_time_s"] = "1"
    return subprocess.run([sys.executable, "-c", JOIN, address], env=env, capture_output=True, text=True,
                          timeout=180, cwd=Path(__file__).resolve().parents[1])


class TestRealCluster:
    def test_ray_address_joins_a_running_head_with_the_same_results(self, ray_head):
        out = join_in_a_new_process(ray_head, "token")  # `ray start` enables token auth; its token is in ~/.ray
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        local = run_batch([Task(f"t{i}", fail_on_two, (i,), num_cpus=1) for i in range(4)], "local")
        assert out.stdout.strip().splitlines()[-1] == repr([(r.name, r.ok, r.value, r.error) for r in local])

    def test_without_the_token_mode_the_error_says_what_to_set(self, ray_head):
        out = join_in_a_new_process(ray_head, None)
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
        assert f"--ray-address {ray_head}: cannot join the Ray cluster (the cluster requires token " \
               "authentication: set RAY_AUTH_MODE=token" in out.stdout
