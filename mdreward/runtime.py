"""Worker processes with hard deadlines, a bounded cache, and the scorer's private event loop.

This is the only module that knows about processes, threads and loops. Work that may hang
(sympy on a power tower, say) runs in a worker process; past its deadline the worker is killed
and replaced, and the caller gets ``TaskTimedOut``. No SIGALRM ever fires in the caller.
"""
from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import logging
import os
import queue
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable, Coroutine, Generic, Hashable, TypeVar

from .timeouts import DEFAULT_TIMEOUTS

log = logging.getLogger(__name__)


class TaskTimedOut(Exception):
    """The task ran past its deadline; its worker was killed."""


class WorkerCrashed(Exception):
    """The worker process died while running the task (it was replaced)."""


class _Countdown:
    """Set once ``count`` parties have counted down."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._cond = threading.Condition()

    def count_down(self) -> None:
        with self._cond:
            self._left -= 1
            self._cond.notify_all()

    def wait(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._left <= 0)


@dataclass(frozen=True)
class _Worker:
    process: subprocess.Popen
    outbox: Connection
    inbox: Connection

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.outbox.close()
        self.inbox.close()


@dataclass(frozen=True)
class _Job:
    payload: Any
    future: concurrent.futures.Future
    deadline_s: float


class KillablePool:
    """N worker processes running ``module:function`` on picklable payloads, each with a deadline.

    Workers are fresh interpreters (``python -m mdreward._worker``) started lazily; a killed worker
    is replaced at once, so the next task finds it warm.
    """

    def __init__(self, target: str, *, workers: int | None = None,
                 start_timeout_s: float = DEFAULT_TIMEOUTS.worker_start_s,
                 shutdown_s: float = DEFAULT_TIMEOUTS.shutdown_s) -> None:
        self.target = target
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._start_timeout_s = start_timeout_s
        self._shutdown_s = shutdown_s
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._ready = _Countdown(self.workers)
        self.kills = 0

    def start(self, wait: bool = True) -> None:
        """Start every worker now (they also start on the first ``submit``); ``wait`` until all are ready."""
        with self._lock:
            if self._closed:
                raise RuntimeError("pool is closed")
            if not self._threads:
                self._start()
        if wait:
            self._ready.wait()

    def submit(self, payload: Any, deadline_s: float) -> concurrent.futures.Future:
        self.start(wait=False)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put(_Job(payload, future, deadline_s))
        return future

    def _start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._serve, name=f"mdreward-pool-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        _live_pools.add(self)

    def _spawn(self) -> _Worker:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        process = subprocess.Popen(
            [sys.executable, "-m", "mdreward._worker", self.target, str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        worker = _Worker(process, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False))
        if not worker.inbox.poll(self._start_timeout_s):
            worker.kill()
            raise WorkerCrashed(f"worker for {self.target} did not start within {self._start_timeout_s}s")
        try:
            worker.inbox.recv()
        except EOFError:
            worker.kill()
            raise WorkerCrashed(f"worker for {self.target} exited while starting (see stderr)") from None
        return worker

    def _serve(self) -> None:
        worker: _Worker | None = None
        try:
            worker = self._spawn()
        except WorkerCrashed:
            log.exception("worker for %s failed to start; retrying on the next task", self.target)
        finally:
            self._ready.count_down()
        while True:
            job = self._jobs.get()
            if job is None:
                break
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                if worker is None:
                    worker = self._spawn()
                worker.outbox.send(job.payload)
                if not worker.inbox.poll(job.deadline_s):
                    raise TaskTimedOut(f"no result within {job.deadline_s}s")
                kind, value = worker.inbox.recv()
            except (TaskTimedOut, WorkerCrashed, EOFError, OSError) as exc:
                if worker is not None:
                    worker.kill()
                    self.kills += 1
                worker = None
                err = exc if isinstance(exc, (TaskTimedOut, WorkerCrashed)) else WorkerCrashed(repr(exc))
                job.future.set_exception(err)
                continue
            if kind == "ok":
                job.future.set_result(value)
            else:
                job.future.set_exception(RuntimeError(value))
        if worker is not None:
            worker.kill()

    def close(self) -> None:
        """Cancel queued tasks, stop the workers; a running task gets ``shutdown_s`` to finish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _live_pools.discard(self)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=self._shutdown_s)


#: Started, unclosed pools; one ``atexit`` hook closes them (a closed pool is not kept alive).
_live_pools: weakref.WeakSet[KillablePool] = weakref.WeakSet()


@atexit.register
def _close_live_pools() -> None:
    for pool in list(_live_pools):
        pool.close()


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A bounded, thread-safe least-recently-used cache."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self.maxsize = maxsize
        self._data: collections.OrderedDict[K, V] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)


R = TypeVar("R")


class LoopThread:
    """A private event loop on a daemon thread: sync and async callers share one loop, so
    clients bound to a loop (HTTP sessions, semaphores) work whichever way they are called."""

    def __init__(self, *, shutdown_s: float = DEFAULT_TIMEOUTS.shutdown_s) -> None:
        self._shutdown_s = shutdown_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mdreward-loop", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        if threading.current_thread() is self._thread:
            raise RuntimeError("cannot block on the scorer loop from inside it")
        future = self.submit(coro)
        try:
            return future.result()
        except KeyboardInterrupt:  # Ctrl-C: stop the work on the loop too, then let it propagate
            future.cancel()
            raise

    async def run_async(self, coro: Coroutine[Any, Any, R]) -> R:
        return await asyncio.wrap_future(self.submit(coro))

    def close(self, final: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> None:
        if not self._thread.is_alive():
            return
        if final is not None:
            self.run(final())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=self._shutdown_s)
        if not self._thread.is_alive():
            self._loop.close()
