"""The sandbox interface: jobs in, plain-data results out, one protocol for every backend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union, runtime_checkable

from ..timeouts import Timeouts


class SandboxUnavailable(RuntimeError):
    """No usable isolation (bubblewrap missing, namespaces refused, service not configured).
    Code is never run without isolation."""


class SandboxError(RuntimeError):
    """Infrastructure failure (sandbox crash, service error) that outlived the retries: the
    sample is unscored, never failed."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-process resource limits of one isolated run (time budgets live in ``Timeouts``)."""

    memory_bytes: int = 1 << 30
    nproc: int = 32
    nofile: int = 256
    fsize_bytes: int = 32 << 20
    output_bytes: int = 16 << 20
    tmpfs_bytes: int = 256 << 20
    cpu_share: float = 1.0  # CPUs one slot may use at most (cgroup cpu quota), where cgroups are available

    def wire(self, timeouts: Timeouts) -> dict[str, float | int]:
        """The limits as the in-sandbox harness reads them (the one place both backends build them)."""
        return {"cpu_s": timeouts.sandbox_cpu_s, "test_s": timeouts.sandbox_test_s, "run_s": timeouts.sandbox_run_s,
                "wall_factor": timeouts.sandbox_wall_factor,
                "memory_bytes": self.memory_bytes, "nproc": self.nproc, "nofile": self.nofile,
                "fsize_bytes": self.fsize_bytes, "output_bytes": self.output_bytes}


@dataclass(frozen=True)
class TestStep:
    """One top-level statement of the test code; ``is_test`` steps are the tests that must pass."""

    __test__ = False  # not a pytest class

    source: str
    is_test: bool


@dataclass(frozen=True)
class AssertJob:
    """Candidate code plus test code that calls it (HumanEval ``check`` or MBPP ``assert`` lines)."""

    code: str
    steps: tuple[TestStep, ...]
    setup: str = ""
    stop_first: bool = True
    entry_point: str | None = None

    @property
    def total(self) -> int:
        return sum(step.is_test for step in self.steps)

    def wire(self) -> dict:
        """The job as the in-sandbox harness reads it (limits added by the backend)."""
        return {"kind": "assert", "code": self.code, "setup": self.setup, "stop_first": self.stop_first,
                "entry_point": self.entry_point, "steps": [[s.source, s.is_test] for s in self.steps]}


@dataclass(frozen=True)
class StdioCase:
    input: str
    output: str


@dataclass(frozen=True)
class StdioJob:
    """A program run once per case on ``input``; its stdout is compared outside the sandbox."""

    code: str
    cases: tuple[StdioCase, ...]
    float_tol: float | None = None
    stop_first: bool = True

    @property
    def total(self) -> int:
        return len(self.cases)


Job = Union[AssertJob, StdioJob]


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest class

    index: int
    passed: bool
    reason: str | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class RunResult:
    """What one isolated run showed. ``passed`` only when every one of ``total`` tests was
    observed to run and pass; ``note`` says why the run stopped early (load error, timeout)."""

    total: int
    tests: tuple[TestResult, ...]
    seconds: float
    backend: str
    note: str | None = None

    @property
    def passed(self) -> bool:
        return (self.total > 0 and len(self.tests) == self.total
                and all(t.passed and t.index == i for i, t in enumerate(self.tests)))

    @property
    def first_failure(self) -> str | None:
        for test in self.tests:
            if not test.passed:
                return f"test {test.index}: {test.reason}"
        if len(self.tests) < self.total:
            return f"{self.total - len(self.tests)} of {self.total} tests did not run" + (f" ({self.note})" if self.note else "")
        return None


@runtime_checkable
class Sandbox(Protocol):
    """Runs untrusted code in isolation. ``run`` raises ``SandboxError`` only for infrastructure
    failures (after its own retries); anything the candidate does is in the ``RunResult``."""

    name: str

    async def run(self, job: Job) -> RunResult: ...

    async def aclose(self) -> None: ...
