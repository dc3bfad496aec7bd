"""tools/run_ssod_benchmarks.py's scheduling: priorities, rows queued ahead of later seeds, and the run lock."""
import fcntl
import importlib.util
import json
import os
import threading
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("run_ssod_benchmarks",
                                                  os.path.join(REPO_ROOT, "tools/run_ssod_benchmarks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_queue_runs_the_smallest_priority_first(script):
    queue = script.JobQueue(1)
    release, order = threading.Event(), []
    blocker = queue.submit((0,), release.wait)
    jobs = [queue.submit(priority, order.append, name) for priority, name in (((2, 1), "c"), ((1, 5), "b"), ((1, 0), "a"))]
    release.set()
    blocker.result(timeout=10)
    for job in jobs:
        job.result(timeout=10)
    assert order == ["a", "b", "c"]


def test_rows_submitted_when_the_burn_in_ends_precede_a_later_seed(script):
    """A job queued from the done-callback of the job a slot just finished runs before already-queued jobs
    of lower priority (a seed's rows before the next seed's burn-in)."""
    queue = script.JobQueue(1)
    release, order = threading.Event(), []
    burn_in = queue.submit((0, 0), lambda: (release.wait(), order.append("seed 1 burn-in")))
    later_seed = queue.submit((1, 0), order.append, "seed 2 burn-in")
    rows = []
    burn_in.add_done_callback(lambda _: rows.append(queue.submit((0, 2), order.append, "seed 1 row")))
    release.set()
    later_seed.result(timeout=10)
    rows[0].result(timeout=10)
    assert order == ["seed 1 burn-in", "seed 1 row", "seed 2 burn-in"]


def test_failures_reach_the_caller(script):
    queue = script.JobQueue(1)
    with pytest.raises(ZeroDivisionError):
        queue.submit((0,), lambda: 1 / 0).result(timeout=10)
    assert queue.submit((0,), lambda: 7).result(timeout=10) == 7  # the slot survives


def test_a_locked_run_is_waited_for_and_then_reused(script, tmp_path):
    """A second instance does not train a run another instance is training: it waits for the lock and
    returns the finished run's result (no training command is started: the config does not even exist)."""
    out = tmp_path / "run"
    out.mkdir()
    holder = open(out / ".lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(script.run_training("missing.yaml", str(out), [], 1)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not result
    (out / "model_final.pth").write_bytes(b"")
    with open(out / "metrics.json", "w") as f:
        f.write(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 9, "teacher/bbox/AP": 12.5, "teacher/bbox/AP50": 20.0}) + "\n")
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    waiter.join(timeout=10)
    assert result == {"AP": 12.5, "AP50": 20.0, "iteration": 9}
