"""The trusted side of a run: stdout comparison and strict reading of the reports that cross
the sandbox boundary. Runs in the scorer, never inside the sandbox."""
from __future__ import annotations

import json
import math
import signal
from typing import Any, Iterable

from .base import StdioCase, TestResult


class ProtocolViolation(Exception):
    """A report from the sandbox's trusted processes did not fit the protocol (infrastructure)."""


def normalize_stdout(text: str) -> list[str]:
    """Lines with trailing whitespace removed, trailing blank lines dropped (``\\r\\n`` = ``\\n``)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def stdout_matches(actual: str, expected: str, float_tol: float | None = None) -> bool:
    """Exact match after ``normalize_stdout``. With ``float_tol``, tokens that both parse as finite
    numbers may differ by ``float_tol`` absolutely or relatively; everything else stays exact."""
    got, want = normalize_stdout(actual), normalize_stdout(expected)
    if got == want:
        return True
    if float_tol is None or len(got) != len(want):
        return False
    for got_line, want_line in zip(got, want):
        got_tokens, want_tokens = got_line.split(), want_line.split()
        if len(got_tokens) != len(want_tokens):
            return False
        for a, b in zip(got_tokens, want_tokens):
            if a != b and not _close(a, b, float_tol):
                return False
    return True


def _close(a: str, b: str, tol: float) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    return abs(x - y) <= tol or abs(x - y) <= tol * abs(y)


def stdio_result(case_index: int, case: StdioCase, report: dict[str, Any], float_tol: float | None) -> TestResult:
    """Judge one stdio case from the sandbox's report of what the program printed."""
    seconds = report.get("s") if isinstance(report.get("s"), (int, float)) else None
    if isinstance(report.get("lost"), str):
        return TestResult(case_index, False, f"not run: {report['lost'][:200]}", seconds)
    if report.get("timed_out"):
        return TestResult(case_index, False, "time limit exceeded", seconds)
    if report.get("output_limit"):
        return TestResult(case_index, False, "output limit exceeded", seconds)
    stdout = report.get("stdout")
    if not isinstance(stdout, str):
        raise ProtocolViolation("stdio report without stdout")
    tail = str(report.get("stderr_tail") or "").strip().splitlines()
    stderr = f" (stderr: {tail[-1][:200]})" if tail else ""
    exit_code = report.get("exit")
    if exit_code == -signal.SIGXCPU:  # the CPU-time rlimit
        return TestResult(case_index, False, "time limit exceeded", seconds)
    if type(exit_code) is int and exit_code != 0:  # a crash fails even after the right output, as judges rule
        ended = f"killed by signal {-exit_code}" if exit_code < 0 else f"exit status {exit_code}"
        return TestResult(case_index, False, f"runtime error: {ended}{stderr}", seconds)
    if stdout_matches(stdout, case.output, float_tol):
        return TestResult(case_index, True, None, seconds)
    return TestResult(case_index, False, f"wrong output{stderr}", seconds)


def assert_results(events: Iterable[dict[str, Any]], total: int) -> tuple[tuple[TestResult, ...], str | None]:
    """Per-test results from the tester's reports, in order; a note when it stopped early."""
    results: list[TestResult] = []
    note = None
    for event in events:
        kind = event.get("ev")
        if kind == "test":
            index, ok = event.get("i"), event.get("ok")
            if type(index) is not int or type(ok) is not bool or index != len(results) or index >= total:
                raise ProtocolViolation(f"out-of-order or malformed test report {event!r:.200}")
            seconds = event.get("s") if isinstance(event.get("s"), (int, float)) else None
            results.append(TestResult(index, ok, None if ok else str(event.get("err") or "failed")[:300], seconds))
        elif kind in ("load_error", "setup_error"):
            note = f"{kind.replace('_', ' ')}: {str(event.get('err'))[:300]}"
        else:
            raise ProtocolViolation(f"unexpected report {event!r:.200}")
    return tuple(results), note


def parse_report(line: bytes | str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        raise ProtocolViolation(f"report is not JSON: {line[:200]!r}") from None
    if not isinstance(value, dict):
        raise ProtocolViolation(f"report is not an object: {line[:200]!r}")
    return value
