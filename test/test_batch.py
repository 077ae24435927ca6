"""batch.py: jobs run locally or on Ray, failures reported per job, Ray absent in one line."""

import os
import sys

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
        assert fake.init_kwargs["num_cpus"] == 2 and "address" not in fake.init_kwargs


def test_a_cluster_that_cannot_be_joined_is_one_line_naming_the_address(monkeypatch):
    fake = _FakeRay()

    def refuse(**kw):
        raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379")

    fake.init = refuse
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(ConfigError, match=r"--ray-address 10\.0\.0\.9:6379: cannot join the Ray cluster \(Failed"):
        run_batch([Task("a", square, (2,))], "ray", ray_address="10.0.0.9:6379")
