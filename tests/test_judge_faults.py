"""Judge faults through the whole scorer: every record comes out, each with the right status.

One mixed batch (all three judged domains, a fast-path science record, format errors, a math
record and a broken record) is scored against a real HTTP server that is down, slow, failing
then recovering, answering garbage bodies, or serving a real (tiny, random) model whose output
is garbage.
"""
from __future__ import annotations

import contextlib

import pytest

from judge_server import FaultPlan, JudgeServer, ScriptedEngine, TransformersEngine, free_port_with_nothing_listening
from judge_support import TEST_TIMEOUTS, route_script, tiny_judge
from mdreward import Scorer, ScoringConfig, Status
from mdreward.judges import judge_options_from_cli
from mdreward.timeouts import Timeouts

TIMEOUTS = Timeouts(judge_request_s=0.5, judge_total_s=2.0, judge_backoff_s=0.01, judge_backoff_max_s=0.05)

RECORDS = [
    {"id": "sci-judged", "domain": "science", "response": "<think>t</think><answer>Nitrogen gas</answer>",
     "reference": "Nitrogen gas!", "prompt": "Main gas of air?"},
    {"id": "sci-fast", "domain": "science", "response": "<think>t</think><answer>Nitrogen</answer>",
     "reference": "Nitrogen"},
    {"id": "sci-format", "domain": "science", "response": "Nitrogen", "reference": "Nitrogen"},
    {"id": "wri-judged", "domain": "writing", "response": "<think>t</think>A long line about the rain on tin.",
     "reference": "Rain."},
    {"id": "wri-format", "domain": "writing", "response": "<think>t</think>", "reference": "Rain."},
    {"id": "wb-judged", "domain": "writingbench", "response": "<think>t</think>A note.", "prompt": "Write a note.",
     "metadata": {"criteria": [{"name": "c6"}, {"name": "c8"}]}},
    {"id": "math", "domain": "math", "response": "<think>1+1</think> \\boxed{2}", "reference": "2"},
    {"id": "broken", "domain": "science", "response": 42},
]
JUDGED = {"sci-judged", "wri-judged", "wb-judged"}
UNAFFECTED = {"sci-fast": (Status.OK, 1.0), "sci-format": (Status.FORMAT_ERROR, -1.0),
              "wri-format": (Status.FORMAT_ERROR, -1.0), "math": (Status.OK, 1.0), "broken": (Status.ERROR, None)}


@contextlib.contextmanager
def endpoint(mode: str):
    if mode == "down":
        yield f"http://127.0.0.1:{free_port_with_nothing_listening()}/v1", None
        return
    if mode == "tiny_model_output":
        engine = TransformersEngine(tiny_judge())
    else:
        engine = ScriptedEngine(route_script)
    faults = {"slow": FaultPlan(delay_s=1.0), "500_then_recovery": FaultPlan(fail_next=3),
              "garbage_body": FaultPlan(garbage_next=10_000), "healthy": FaultPlan(),
              "tiny_model_output": FaultPlan()}[mode]
    with JudgeServer(engine, faults=faults) as server:
        yield server.url, server


EXPECTED_JUDGED = {
    # mode: {record id: (status, reward)}; None reward = unscored
    "healthy": {"sci-judged": (Status.OK, 1.0), "wri-judged": (Status.OK, 1.0), "wb-judged": (Status.OK, 7.0)},
    "500_then_recovery": {"sci-judged": (Status.OK, 1.0), "wri-judged": (Status.OK, 1.0),
                          "wb-judged": (Status.OK, 7.0)},
    "down": {k: (Status.ERROR, None) for k in JUDGED},
    "slow": {k: (Status.ERROR, None) for k in JUDGED},
    "garbage_body": {k: (Status.ERROR, None) for k in JUDGED},
    # A real random model answers without a verdict: that is the response's outcome in every domain
    # (science wrong, writing worse, writingbench the lowest score), never "unscored".
    "tiny_model_output": {"sci-judged": (Status.OK, 0.0), "wri-judged": (Status.OK, -0.5),
                          "wb-judged": (Status.OK, 1.0)},
}


@pytest.mark.parametrize("mode", list(EXPECTED_JUDGED))
def test_every_record_ends_with_the_right_status(mode):
    with endpoint(mode) as (url, server):
        options = judge_options_from_cli(url, "judge", {"judge": {"max_retries": 2}})
        for domain in options.values():
            domain["max_judge_tokens"] = 12
        options["writingbench"]["max_attempts"] = 2
        timeouts = TIMEOUTS if mode != "tiny_model_output" else TEST_TIMEOUTS  # real generation takes longer
        with Scorer(ScoringConfig(timeouts=timeouts, domain_options=options)) as scorer:
            scores = scorer.score_batch(RECORDS)
    assert len(scores) == len(RECORDS)
    expected = {**UNAFFECTED, **EXPECTED_JUDGED[mode]}
    for record, score in zip(RECORDS, scores):
        status, reward = expected[record["id"]]
        assert (score.status, score.reward) == (status, reward), (record["id"], score)
        if score.status is Status.ERROR:
            assert record["id"] in score.error
    if mode == "500_then_recovery":
        assert server.faults.calls >= 3 + 4  # three failures retried, then 1 + 2 + 2 good calls
    if mode == "tiny_model_output":
        assert scores[0].components["verdict_problem"]
