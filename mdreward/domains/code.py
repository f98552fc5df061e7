"""Code: the last fenced python block after ``</think>`` must pass every test, run in a sandbox.

Rewards (CGPO paper): every test observed to pass 1.0; valid code but a test fails (or did not
run) -0.5; no code block, or code that does not parse, -1.0. A sandbox that cannot be started or
keeps failing makes the sample unscored, never wrong.

The record's ``tests`` field (see docs/code.md) is one of
``{"assert": "<python>", "entry_point": "name", "setup": "<python>", "prefix": "<python>"}`` or
``{"stdio": [{"input": "...", "output": "..."}, ...], "float_tol": 1e-6}``.
"""
from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

from ..extract import FormatViolation, complete_function, last_code_block, parse_python, split_think
from ..registry import DomainSpec, DomainUnavailable
from ..sandbox import (AssertJob, Job, LocalSandbox, RunResult, Sandbox, SandboxError, SandboxLimits,
                       SandboxUnavailable, StdioCase, StdioJob, TestStep)
from ..timeouts import Timeouts
from ..types import FormatRules, RewardTable, Sample, Score

TABLE = RewardTable({"correct": 1.0, "wrong": -0.5, "format_error": -1.0})
FUSION_ENDPOINT_ENV = "SANDBOX_FUSION_ENDPOINT"


class TestsFieldError(ValueError):
    """The record's ``tests`` field breaks the contract (the record's fault, not the model's)."""

    __test__ = False  # not a pytest class


_COMPOUND = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With, ast.AsyncWith, ast.Try, ast.Match)
_CHECKS = (ast.Assert, ast.Call)


def _is_test(statement: ast.stmt) -> bool:
    """A top-level ``assert``, a call (``check(candidate)``, ``assert_close(...)``), or a loop/``if``/
    ``with``/``try``/``match`` holding either (``if __name__ == "__main__":`` blocks included)."""
    if isinstance(statement, ast.Assert):
        return True
    if isinstance(statement, ast.Expr):
        return any(isinstance(node, ast.Call) for node in ast.walk(statement))
    if isinstance(statement, _COMPOUND) or type(statement).__name__ == "TryStar":
        return any(isinstance(node, _CHECKS) for node in ast.walk(statement))
    return False


def assert_steps(source: str, entry_point: str | None) -> tuple[TestStep, ...]:
    """Split test code into steps that run in order as one program: each top-level test statement
    (see ``_is_test``) is one test; the other statements (imports, definitions, assignments) run
    between them, and statements after the last test belong to it, so a failure anywhere fails the
    record. Code that defines ``check`` and never calls it (HumanEval) gets one more test:
    ``check(<entry_point>)``."""
    try:
        module = ast.parse(source)
    except SyntaxError as exc:
        raise TestsFieldError(f"tests.assert is not valid python: {exc.msg} (line {exc.lineno})") from None
    defines_check = any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == "check" for s in module.body)
    calls_check = any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"
                      for s in module.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for node in ast.walk(s))
    steps: list[TestStep] = []
    pending: list[str] = []
    for statement in module.body:
        if _is_test(statement):
            if pending:
                steps.append(TestStep("\n".join(pending), False))
                pending = []
            steps.append(TestStep(ast.unparse(statement), True))
        else:
            pending.append(ast.unparse(statement))
    if defines_check and not calls_check and entry_point:
        if not entry_point.isidentifier():
            raise TestsFieldError(f"tests.entry_point {entry_point!r} is not a python identifier")
        if pending:
            steps.append(TestStep("\n".join(pending), False))
            pending = []
        steps.append(TestStep(f"check({entry_point})", True))
    if not any(step.is_test for step in steps):
        raise TestsFieldError("tests.assert has no test: no top-level assert or call, and no check function with an "
                              "entry_point")
    if pending:  # trailing statements run after the last test and can still fail it
        last = max(i for i, step in enumerate(steps) if step.is_test)
        steps[last] = TestStep("\n".join([steps[last].source, *pending]), True)
        pending = []
    return tuple(steps)


def job_for(tests: Mapping[str, Any] | None, code: str, *, stop_first: bool) -> Job:
    """The sandbox job for ``code`` under the record's ``tests`` field (``TestsFieldError`` if bad)."""
    if not isinstance(tests, Mapping):
        raise TestsFieldError("field 'tests' is required by domain 'code' (an object with 'assert' or 'stdio')")
    if ("assert" in tests) == ("stdio" in tests):
        raise TestsFieldError("field 'tests' must have exactly one of 'assert' or 'stdio'")
    if "assert" in tests:
        source, entry_point, setup = tests.get("assert"), tests.get("entry_point"), tests.get("setup", "")
        if not isinstance(source, str) or not source.strip():
            raise TestsFieldError("tests.assert must be a non-empty string of python")
        if entry_point is not None and not isinstance(entry_point, str):
            raise TestsFieldError("tests.entry_point must be a string")
        if not isinstance(setup, str):
            raise TestsFieldError("tests.setup must be a string")
        if "prefix" in tests and (not isinstance(tests["prefix"], str) or not entry_point):
            raise TestsFieldError("tests.prefix must be a string, and needs tests.entry_point")
        if setup:
            try:
                ast.parse(setup)
            except SyntaxError as exc:
                raise TestsFieldError(f"tests.setup is not valid python: {exc.msg}") from None
        return AssertJob(code, assert_steps(source, entry_point), setup, stop_first, entry_point)
    cases = tests.get("stdio")
    if not isinstance(cases, list) or not cases:
        raise TestsFieldError("tests.stdio must be a non-empty list of {input, output} objects")
    parsed = []
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping) or not isinstance(case.get("input"), str) or not isinstance(case.get("output"), str):
            raise TestsFieldError(f"tests.stdio[{i}] must be an object with string 'input' and 'output'")
        parsed.append(StdioCase(case["input"], case["output"]))
    float_tol = tests.get("float_tol")
    if float_tol is not None and (isinstance(float_tol, bool) or not isinstance(float_tol, (int, float))
                                  or not math.isfinite(float_tol) or float_tol < 0):
        raise TestsFieldError("tests.float_tol must be a non-negative number")
    return StdioJob(code, tuple(parsed), None if float_tol is None else float(float_tol), stop_first)


def _syntax_problem(code: str) -> str | None:
    parsed = parse_python(code)
    return parsed if isinstance(parsed, str) else None


class CodeDomain:
    """Scores code with a ``Sandbox`` (the local bubblewrap backend unless one is passed in).

    Options: ``sandbox`` (any ``Sandbox``), ``backend`` ("local" or "sandbox_fusion"),
    ``endpoint`` (SandboxFusion URL; default ``$SANDBOX_FUSION_ENDPOINT``), ``workers``,
    ``limits`` (``SandboxLimits`` or a dict of its fields), ``per_test`` (run every test and report
    each one), ``concurrency`` (SandboxFusion requests in flight).
    """

    name = "code"

    def __init__(self, *, format_rules: FormatRules, timeouts: Timeouts, table: RewardTable = TABLE,
                 sandbox: Sandbox | None = None, backend: str = "local", endpoint: str | None = None,
                 workers: int | None = None, limits: SandboxLimits | Mapping[str, int] | None = None,
                 per_test: bool = False,
                 concurrency: int = 16) -> None:
        self.table = table
        self.format_rules = format_rules
        self.timeouts = timeouts
        self.per_test = per_test
        self._owns_sandbox = sandbox is None
        if sandbox is None:
            sandbox = _build_sandbox(backend, endpoint, workers, limits, timeouts, concurrency)
        self.sandbox = sandbox

    async def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        scores: list[Score | None] = [None] * len(samples)
        pending: dict[str, tuple[Job, list[int]]] = {}
        for i, sample in enumerate(samples):
            prepared = self._prepare(sample)
            if isinstance(prepared, Score):
                scores[i] = prepared
                continue
            key = json.dumps([prepared.code, _job_key(prepared)])
            pending.setdefault(key, (prepared, []))[1].append(i)
        jobs = list(pending.values())
        outcomes = await asyncio.gather(*(self._run(job) for job, _ in jobs))
        for (job, indices), outcome in zip(jobs, outcomes):
            for i in indices:
                scores[i] = self._score(samples[i], job, outcome)
        return [s for s in scores if s is not None]

    def _prepare(self, sample: Sample) -> Job | Score:
        try:  # a broken record is unscored whatever the response looks like
            job = job_for(sample.tests, "", stop_first=not self.per_test)
        except TestsFieldError as exc:
            return Score.unscored(f"{sample.where()}: {exc}")
        split = split_think(sample.response, self.format_rules)
        if isinstance(split, FormatViolation):
            return Score.format_error(self.table["format_error"], split.reason)
        code = last_code_block(split.after)
        if isinstance(code, FormatViolation):
            return Score.format_error(self.table["format_error"], code.reason)
        if isinstance(sample.tests, Mapping) and "prefix" in sample.tests:  # a body-only answer gets its header
            code = complete_function(code, sample.tests["prefix"], sample.tests["entry_point"])
        problem = _syntax_problem(code)
        if problem:
            return Score.format_error(self.table["format_error"], problem, code_chars=len(code))
        return dataclasses.replace(job, code=code)

    async def _run(self, job: Job) -> RunResult | str:
        try:
            return await self.sandbox.run(job)
        except SandboxError as exc:
            return str(exc)

    def _score(self, sample: Sample, job: Job, outcome: RunResult | str) -> Score:
        if isinstance(outcome, str):
            return Score.unscored(f"{sample.where()}: sandbox failure: {outcome}", format_ok=True)
        passed = outcome.passed
        components: dict[str, Any] = {
            "format_ok": True, "correct": passed, "tests_total": outcome.total,
            "tests_run": len(outcome.tests), "tests_passed": sum(t.passed for t in outcome.tests),
            "backend": outcome.backend, "sandbox_s": round(outcome.seconds, 6), "code_chars": len(job.code)}
        if not passed:
            components["first_failure"] = outcome.first_failure
        if self.per_test:
            components["tests"] = [{"index": t.index, "passed": t.passed, "reason": t.reason, "seconds": t.seconds}
                                   for t in outcome.tests]
        return Score.ok(self.table["correct" if passed else "wrong"], answer=job.code, **components)

    def metrics(self) -> dict[str, int]:
        """The sandbox's counters for monitoring (local: slot restarts by cause; SandboxFusion:
        requests and retries); empty for a sandbox without them."""
        counters = getattr(self.sandbox, "metrics", None)
        return dict(counters()) if callable(counters) else {}

    async def aclose(self) -> None:
        if self._owns_sandbox:
            await self.sandbox.aclose()


def _job_key(job: Job) -> Any:
    if isinstance(job, AssertJob):
        return ["assert", job.setup, job.entry_point, [[s.source, s.is_test] for s in job.steps]]
    return ["stdio", job.float_tol, [[c.input, c.output] for c in job.cases]]


def _build_sandbox(backend: str, endpoint: str | None, workers: int | None,
                   limits: SandboxLimits | Mapping[str, int] | None,
                   timeouts: Timeouts, concurrency: int) -> Sandbox:
    if isinstance(limits, Mapping):  # from a JSON/YAML config
        limits = SandboxLimits(**limits)
    if backend == "local":
        try:
            return LocalSandbox(workers=workers, timeouts=timeouts, limits=limits or SandboxLimits()).start()
        except SandboxUnavailable as exc:
            raise DomainUnavailable(f"no usable code sandbox: {exc}") from None
    if backend == "sandbox_fusion":
        endpoint = endpoint or os.environ.get(FUSION_ENDPOINT_ENV)
        if not endpoint:
            raise DomainUnavailable(f"backend 'sandbox_fusion' needs an endpoint (option 'endpoint' or ${FUSION_ENDPOINT_ENV})")
        from ..sandbox.fusion import FusionSandbox
        return FusionSandbox(endpoint, timeouts=timeouts, concurrency=concurrency, limits=limits or SandboxLimits())
    raise DomainUnavailable(f"unknown code sandbox backend {backend!r} (use 'local' or 'sandbox_fusion')")


spec = DomainSpec(
    name="code",
    factory=CodeDomain,
    description="Last fenced python block after </think> passes every test (assert or stdio) in an isolated sandbox.",
    table=TABLE,
    required_fields=("response", "tests"),
    example=Sample(domain="code", response="<think>Add one.</think>\n```python\ndef inc(x):\n    return x + 1\n```",
                   tests={"assert": "assert inc(1) == 2\nassert inc(-1) == 0", "entry_point": "inc"}),
)
