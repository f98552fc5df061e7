import concurrent.futures
import gc
import os
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pytest

from mdreward import runtime
from mdreward.runtime import KillablePool, LoopThread, LRUCache, TaskTimedOut

TESTS = str(Path(__file__).resolve().parent)
#: Workers import the target by module name; a site-packages ``tests`` package would shadow ``tests.worker_targets``.
TARGET = "worker_targets:run"


@pytest.fixture(autouse=True)
def _workers_find_the_targets(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))


@pytest.fixture
def pool():
    p = KillablePool(TARGET, workers=1)
    yield p
    p.close()


def test_hung_task_is_killed_and_the_worker_replaced(pool):
    started = time.perf_counter()
    with pytest.raises(TaskTimedOut):
        pool.submit(("sleep", 60), deadline_s=1.0).result(timeout=30)
    assert time.perf_counter() - started < 20
    assert pool.kills == 1
    assert pool.submit(("echo", 5), deadline_s=30).result(timeout=60) == 5


def test_crashing_worker_is_reported_and_replaced(pool):
    from mdreward.runtime import WorkerCrashed

    with pytest.raises(WorkerCrashed):
        pool.submit(("exit", 3), deadline_s=30).result(timeout=60)
    assert pool.submit(("echo", "still serving"), deadline_s=30).result(timeout=60) == "still serving"


def test_exceptions_in_the_task_do_not_kill_the_worker(pool):
    with pytest.raises(RuntimeError, match="ValueError"):
        pool.submit(("raise", None), deadline_s=30).result(timeout=60)
    assert pool.kills == 0


def test_tasks_run_in_parallel_across_workers():
    p = KillablePool(TARGET, workers=2)
    try:
        p.submit(("echo", 0), 60).result(timeout=60)
        p.submit(("echo", 0), 60).result(timeout=60)
        first, second = (f.result(timeout=60) for f in [p.submit(("span", 1.0), 30) for _ in range(2)])
        assert max(first[0], second[0]) < min(first[1], second[1])  # the two tasks ran at the same time
    finally:
        p.close()


def test_lru_cache_evicts_the_oldest():
    cache: LRUCache[str, int] = LRUCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3


def test_pools_share_one_exit_hook_and_a_closed_pool_is_not_kept_alive(monkeypatch):
    registered = []
    monkeypatch.setattr(runtime.atexit, "register", registered.append)
    pools = [KillablePool(TARGET, workers=1) for _ in range(3)]
    for p in pools:
        p.start()
        p.close()
    assert registered == []  # one module-level hook, not one per pool
    ref = weakref.ref(pools[0])
    del pools, p
    gc.collect()
    assert ref() is None


def test_the_exit_hook_stops_workers_of_pools_never_closed(tmp_path):
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from mdreward.runtime import KillablePool
        pool = KillablePool("worker_targets:run", workers=2)
        pool.start()
        import glob, os
        children = set()
        for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
            children.update(open(path).read().split())
        print(" ".join(sorted(children)), flush=True)
    """)
    root = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", script, root], capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0, result.stderr
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 2
    for pid in pids:
        assert not _alive(pid), f"worker {pid} outlived its pool's process"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _pool_running(shutdown_s: float, sleep_s: float) -> tuple[KillablePool, concurrent.futures.Future]:
    """A warm one-worker pool whose worker is busy sleeping ``sleep_s``."""
    p = KillablePool(TARGET, workers=1, shutdown_s=shutdown_s)
    p.submit(("echo", 0), 60).result(timeout=60)
    running = p.submit(("sleep", sleep_s), deadline_s=sleep_s + 30)
    while not running.running():
        time.sleep(0.01)
    return p, running


def test_a_configured_shutdown_budget_bounds_close():
    p, _ = _pool_running(shutdown_s=0.2, sleep_s=20)
    started = time.monotonic()
    p.close()
    assert time.monotonic() - started < 10  # 0.2 s configured; the default (30 s) would wait for the 20 s task
    loop = LoopThread(shutdown_s=0.3)
    assert loop._shutdown_s == 0.3
    loop.close()


def test_closing_cancels_queued_tasks():
    p, running = _pool_running(shutdown_s=30, sleep_s=0.5)
    queued = [p.submit(("sleep", 60), deadline_s=120) for _ in range(3)]
    p.close()
    assert running.result(timeout=1) == 0.5
    assert all(f.cancelled() for f in queued)
