"""Every time budget of mdreward lives here; nothing else hard-codes a timeout."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Work past its budget is killed from outside (worker processes), never by SIGALRM
    in the caller's thread."""

    # Math: Math-Verify's own parse/verify budgets inside a worker process, and the hard deadline
    # after which the parent kills that worker. A check past its budget counts as not equivalent.
    math_parse_s: float = 3.0
    math_verify_s: float = 3.0
    math_hard_kill_s: float = 10.0
    # Start-up of a worker process (imports included) before it counts as an infrastructure failure,
    # and how long closing a pool or the scorer's loop waits for its threads.
    worker_start_s: float = 60.0
    shutdown_s: float = 30.0
    # Code sandbox: one isolated run with all tests of a sample (wall), each test or stdio case
    # inside it (wall), CPU seconds per sandboxed process (RLIMIT_CPU), start-up of a warm sandbox,
    # the scorer's extra wait before it declares a silent sandbox dead, and the first back-off
    # between retries of a remote sandbox service (doubled per retry).
    sandbox_run_s: float = 20.0
    sandbox_test_s: float = 6.0
    sandbox_cpu_s: float = 10.0
    sandbox_start_s: float = 30.0
    sandbox_grace_s: float = 5.0
    sandbox_backoff_s: float = 0.5
    # A test or stdio case times out when the candidate's own CPU time passes sandbox_test_s, or its
    # wall time passes sandbox_test_s * sandbox_wall_factor (a busy machine does not fail correct code).
    sandbox_wall_factor: float = 3.0
    # Model judges and remote services: one HTTP call, and one request's total with its retries
    # (from its first attempt: time queued behind the rest of a batch does not count).
    judge_request_s: float = 120.0
    judge_total_s: float = 600.0
    # Judge retries: exponential backoff with full jitter, first delay and cap.
    judge_backoff_s: float = 0.5
    judge_backoff_max_s: float = 20.0
    service_request_s: float = 60.0
    # HTTP reward service: on shutdown, in-flight requests get this long to finish.
    server_drain_s: float = 60.0


DEFAULT_TIMEOUTS = Timeouts()
