import concurrent.futures
import time

import pytest

from mdreward.runtime import KillablePool, LRUCache, TaskTimedOut


@pytest.fixture
def pool():
    p = KillablePool("tests.worker_targets:run", workers=1)
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
    p = KillablePool("tests.worker_targets:run", workers=2)
    try:
        p.submit(("echo", 0), 60).result(timeout=60)
        p.submit(("echo", 0), 60).result(timeout=60)
        started = time.perf_counter()
        futures = [p.submit(("sleep", 1.0), 30) for _ in range(2)]
        concurrent.futures.wait(futures, timeout=30)
        assert time.perf_counter() - started < 1.9
    finally:
        p.close()


def test_lru_cache_evicts_the_oldest():
    cache: LRUCache[str, int] = LRUCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
