"""The SandboxFusion backend: the same jobs, run by a SandboxFusion service's ``/run_code``.

Stdio cases are sent as the program with its ``stdin``; outputs are compared here, so expected
outputs never leave the scorer. Assert jobs send the harness (``harness.run_standalone``) as the
program and the job as stdin, with a fresh nonce that marks the tester's report lines (the
candidate cannot print them: its stdout is closed, and the nonce is not in any file). Transient
failures (connection errors, timeouts, HTTP 5xx/429, ``SandboxError`` status) are retried with
exponential back-off; what still fails raises ``SandboxError`` (the sample is unscored).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import secrets
import threading
import time
from typing import Any

import httpx
from sandbox_fusion.models import RunCodeRequest, RunCodeResponse

from ..timeouts import DEFAULT_TIMEOUTS, Timeouts
from .base import AssertJob, Job, RunResult, SandboxError, SandboxLimits, StdioJob, TestResult
from .local import harness_program
from .verdict import ProtocolViolation, assert_results, parse_report, stdio_result

log = logging.getLogger(__name__)
_TRANSIENT_HTTP = {429, 500, 502, 503, 504}


class _Transient(Exception):
    pass


class FusionSandbox:
    """A SandboxFusion client. ``concurrency`` bounds requests in flight; ``retries`` extra
    attempts per request, sleeping ``timeouts.sandbox_backoff_s * 2**attempt`` between them."""

    name = "sandbox_fusion"

    def __init__(self, endpoint: str, *, timeouts: Timeouts = DEFAULT_TIMEOUTS, concurrency: int = 16,
                 retries: int = 3, client: httpx.Client | None = None, limits: SandboxLimits = SandboxLimits()) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.limits = limits
        self.timeouts = timeouts
        self.retries = retries
        self._client = client or httpx.Client(timeout=timeouts.service_request_s)
        self._owns_client = client is None
        self._executor = concurrent.futures.ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="mdreward-fusion")
        self._lock = threading.Lock()
        self.requests = 0
        self.retried = 0

    def metrics(self) -> dict[str, int]:
        """Counters for monitoring: requests sent and retried."""
        return {"requests": self.requests, "retried": self.retried}

    async def run(self, job: Job) -> RunResult:
        return await asyncio.wrap_future(self._executor.submit(self.run_blocking, job))

    def run_blocking(self, job: Job) -> RunResult:
        started = time.perf_counter()
        if isinstance(job, StdioJob):
            results: list[TestResult] = []
            for index, case in enumerate(job.cases):
                response = self._run_code(job.code, case.input)
                results.append(stdio_result(index, case, _stdio_report(response), job.float_tol))
                if job.stop_first and not results[-1].passed:
                    break
            return RunResult(job.total, tuple(results), time.perf_counter() - started, self.name)
        return self._run_assert(job, started)

    def _run_assert(self, job: AssertJob, started: float) -> RunResult:
        nonce = secrets.token_hex(16)
        t = self.timeouts
        payload = {**job.wire(), "nonce": nonce, "limits": self.limits.wire(t)}
        program = harness_program(f"run_standalone({t.sandbox_start_s!r})")
        response = self._run_code(program, json.dumps(payload))
        run = response.run_result
        prefix = nonce + " "
        events, end = [], None
        for line in (run.stdout or "").splitlines() if run is not None else []:
            if not line.startswith(prefix):
                continue
            try:
                report = parse_report(line[len(prefix):])
            except ProtocolViolation as exc:
                raise SandboxError(f"SandboxFusion run: {exc}") from None
            if report.get("ev") == "end":
                end = report
                break
            events.append(report)
        try:
            tests, note = assert_results(events, job.total)
        except ProtocolViolation as exc:
            raise SandboxError(f"SandboxFusion run: {exc}") from None
        if end is None:
            timed_out = run is not None and run.status.value == "TimeLimitExceeded"
            note = note or ("run exceeded its time limit" if timed_out else "the harness did not finish")
        elif end.get("reason") == "run_timeout":
            note = f"run exceeded its time limit of {t.sandbox_run_s}s"
        return RunResult(job.total, tests, time.perf_counter() - started, self.name, note)

    def _run_code(self, code: str, stdin: str) -> RunCodeResponse:
        t = self.timeouts
        request = RunCodeRequest(code=code, stdin=stdin, language="python", run_timeout=t.sandbox_run_s,
                                 compile_timeout=t.sandbox_run_s)
        failure = "no attempt"
        for attempt in range(1 + self.retries):
            if attempt:
                self.retried += 1
                time.sleep(t.sandbox_backoff_s * 2 ** (attempt - 1))
            try:
                return self._post(request)
            except _Transient as exc:
                failure = str(exc)
                log.warning("SandboxFusion attempt %d failed: %s", attempt + 1, failure)
        raise SandboxError(f"SandboxFusion failed {1 + self.retries} times: {failure}")

    def _post(self, request: RunCodeRequest) -> RunCodeResponse:
        self.requests += 1
        try:
            reply = self._client.post(f"{self.endpoint}/run_code", json=_dump(request))
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if reply.status_code in _TRANSIENT_HTTP:
            raise _Transient(f"HTTP {reply.status_code}: {reply.text[:200]}")
        if reply.status_code != 200:
            raise SandboxError(f"SandboxFusion answered HTTP {reply.status_code}: {reply.text[:300]}")
        try:
            response = RunCodeResponse(**reply.json())
        except (ValueError, TypeError) as exc:
            raise _Transient(f"malformed response: {exc}") from None
        if response.status.value == "SandboxError":
            raise _Transient(f"SandboxError: {response.message[:200]}")
        if response.run_result is None:
            raise _Transient(f"response without run_result (status {response.status.value}): {response.message[:200]}")
        return response

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._owns_client:
            self._client.close()


def _dump(request: RunCodeRequest) -> dict[str, Any]:
    dump = getattr(request, "model_dump", None) or request.dict
    return json.loads(json.dumps(dump(), default=str))


def _stdio_report(response: RunCodeResponse) -> dict[str, Any]:
    run = response.run_result
    assert run is not None
    return {"stdout": run.stdout or "", "stderr_tail": (run.stderr or "")[-2000:], "exit": run.return_code,
            "timed_out": run.status.value == "TimeLimitExceeded", "output_limit": False, "s": run.execution_time}
