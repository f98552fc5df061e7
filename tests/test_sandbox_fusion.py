"""The SandboxFusion backend against a local HTTP stand-in speaking ``/run_code`` (and against a
real service when SANDBOX_FUSION_ENDPOINT is set)."""
from __future__ import annotations

import asyncio
import os

import pytest

from code_support import code_sample
from mdreward import Scorer, ScoringConfig, Status
from mdreward.domains.code import CodeDomain, job_for
from mdreward.registry import DomainUnavailable
from mdreward.sandbox.fusion import FusionSandbox
from mdreward.timeouts import Timeouts
from mdreward.types import DEFAULT_FORMAT
from sandbox_fusion_server import FusionStandIn

FAST = Timeouts(sandbox_test_s=3.0, sandbox_run_s=6.0, sandbox_cpu_s=3.0, sandbox_backoff_s=0.05)
ADD = {"assert": "assert add(1, 2) == 3\nassert add(-4, 4) == 0", "entry_point": "add"}
STDIO = {"stdio": [{"input": "1 2\n", "output": "3\n"}, {"input": "40 2\n", "output": "42\n"}]}
RIGHT = "def add(a, b):\n    return a + b\n"
SAMPLES = [
    (RIGHT, ADD, 1.0),
    ("def add(a, b):\n    return 3\n", ADD, -0.5),
    ("import sys\nsys.exit(0)\n", ADD, -0.5),
    ("class Yes:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return Yes()\n", ADD, -0.5),
    ("import os\nfor fd in range(64):\n    try:\n        os.write(fd, b'{\"ev\": \"test\", \"i\": 0, \"ok\": true}\\n')\n"
     "    except OSError:\n        pass\ndef add(a, b):\n    return 0\n", ADD, -0.5),
    ("a, b = map(int, input().split())\nprint(a + b)\n", STDIO, 1.0),
    ("print(3)\n", STDIO, -0.5),
    ("while True:\n    pass\n", STDIO, -0.5),
    ("class Adder:\n    def __init__(self):\n        self.total = 0\n    def add(self, x):\n        self.total += x\n        return self\n"
     "def add(a, b):\n    return Adder().add(a).add(b).total\n", ADD, 1.0),
    ("def add(a, b):\n    raise StopIteration\n", {"assert": "assert all(map(add, [1], [2]))", "entry_point": "add"}, -0.5),
]


@pytest.fixture(scope="module")
def stand_in():
    with FusionStandIn() as server:
        yield server


def score_all(endpoint, samples, **options):
    config = ScoringConfig(timeouts=FAST, domain_options={"code": {"backend": "sandbox_fusion", "endpoint": endpoint, **options}})
    with Scorer(config) as scorer:
        return scorer.score_batch(samples)


def test_rewards_through_the_service(stand_in):
    scores = score_all(stand_in.endpoint, [code_sample(code, tests, str(i)) for i, (code, tests, _) in enumerate(SAMPLES)])
    assert [s.reward for s in scores] == [reward for _, _, reward in SAMPLES], [s.components.get("first_failure") for s in scores]
    assert all(s.components["backend"] == "sandbox_fusion" for s in scores)


def test_transient_failures_are_retried(stand_in):
    stand_in.fail_next, stand_in.fail_as_status = 2, False
    sandbox = FusionSandbox(stand_in.endpoint, timeouts=FAST, retries=3)
    domain = CodeDomain(format_rules=DEFAULT_FORMAT, timeouts=FAST, sandbox=sandbox)
    score = asyncio.run(domain.score_batch([code_sample(RIGHT, ADD)]))[0]
    stand_in.fail_next, stand_in.fail_as_status = 1, True
    again = asyncio.run(domain.score_batch([code_sample(RIGHT, ADD, "again")]))[0]
    sandbox.close()
    assert (score.reward, again.reward) == (1.0, 1.0)
    assert sandbox.retried == 3


def test_a_service_that_keeps_failing_gives_unscored_records(stand_in):
    stand_in.fail_next, stand_in.fail_as_status = 100, False
    try:
        scores = score_all(stand_in.endpoint, [code_sample(RIGHT, ADD, "x1"), code_sample("print(3)\n", STDIO, "x2")])
    finally:
        stand_in.fail_next = 0
    assert all(s.status is Status.ERROR and s.reward is None for s in scores)
    assert "record 'x1'" in scores[0].error and "HTTP 503" in scores[0].error


def test_a_rejected_request_is_unscored_without_retries(stand_in):
    stand_in.reject_with = 400
    before = stand_in.requests
    try:
        score = score_all(stand_in.endpoint, [code_sample(RIGHT, ADD, "r")])[0]
    finally:
        stand_in.reject_with = None
    assert score.status is Status.ERROR and "HTTP 400" in score.error
    assert stand_in.requests - before == 1


def test_concurrency_is_bounded(stand_in):
    stand_in.max_in_flight = 0
    samples = [code_sample(f"a, b = map(int, input().split())\nprint(a + b + {i} - {i})\n", STDIO) for i in range(6)]
    scores = score_all(stand_in.endpoint, samples, concurrency=2)
    assert all(s.reward == 1.0 for s in scores)
    assert 1 <= stand_in.max_in_flight <= 2


def test_limits_and_harness_program_are_the_local_backends(monkeypatch):
    """One place builds the limits (``SandboxLimits.wire``) and the harness program for both backends."""
    import json

    from mdreward.sandbox import SandboxLimits
    from mdreward.sandbox.local import HARNESS_SOURCE, harness_program
    sent: list[tuple[str, str]] = []

    def capture(self, code, stdin):
        sent.append((code, stdin))
        raise RuntimeError("captured")

    monkeypatch.setattr(FusionSandbox, "_run_code", capture)
    for limits in (SandboxLimits(), SandboxLimits(nproc=7, memory_bytes=1 << 28)):
        sandbox = FusionSandbox("http://unused", timeouts=FAST, limits=limits)
        with pytest.raises(RuntimeError, match="captured"):
            sandbox.run_blocking(job_for(ADD, RIGHT, stop_first=True))
        sandbox.close()
        code, stdin = sent[-1]
        assert json.loads(stdin)["limits"] == limits.wire(FAST)
        assert code == harness_program(f"run_standalone({FAST.sandbox_start_s!r})")
        assert code.startswith(HARNESS_SOURCE) and "__main__" not in code.split(HARNESS_SOURCE, 1)[1]


def test_missing_endpoint_makes_the_domain_unavailable(monkeypatch):
    monkeypatch.delenv("SANDBOX_FUSION_ENDPOINT", raising=False)
    with pytest.raises(DomainUnavailable, match="SANDBOX_FUSION_ENDPOINT"):
        CodeDomain(format_rules=DEFAULT_FORMAT, timeouts=FAST, backend="sandbox_fusion")


@pytest.mark.optin
@pytest.mark.skipif(not os.environ.get("SANDBOX_FUSION_ENDPOINT"), reason="set SANDBOX_FUSION_ENDPOINT to test a real service")
def test_against_a_real_sandbox_fusion_service():
    scores = score_all(os.environ["SANDBOX_FUSION_ENDPOINT"], [code_sample(c, t, str(i)) for i, (c, t, _) in enumerate(SAMPLES)])
    assert [s.reward for s in scores] == [reward for _, _, reward in SAMPLES]
