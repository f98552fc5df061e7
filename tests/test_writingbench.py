"""WritingBench critic domain: per-criterion prompts, strict JSON, bounded retries, mean score."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from judge_server import FaultPlan, JudgeServer, ScriptedEngine
from judge_support import TEST_TIMEOUTS, critic_script
from mdreward import Sample, Scorer, ScoringConfig, Status
from mdreward.domains.writingbench import CRITIC_SYSTEM, render_criterion
from mdreward.judges.base import JudgeReply
from mdreward.judges.verdicts import critic_json

WRITINGBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "writingbench"


def criteria(*names: str) -> list[dict]:
    return [{"name": n, "criteria_description": f"about {n}", "1-2": "poor", "9-10": "excellent"} for n in names]


def sample(names, response: str = "Dear team, the meeting moves to Friday.", **kw) -> Sample:
    return Sample("writingbench", f"<think>plan</think>\n{response}", prompt="Write a short note.",
                  metadata={"criteria": criteria(*names)} if names is not None else {}, **kw)


@pytest.fixture(scope="module")
def server():
    with JudgeServer(ScriptedEngine(critic_script)) as s:
        yield s


def bench_scorer(url: str, **options) -> Scorer:
    judge = {"url": url, "model": "critic", "max_retries": 1}
    return Scorer(ScoringConfig(timeouts=TEST_TIMEOUTS,
                                domain_options={"writingbench": {"judge": judge, **options}}))


def test_mean_over_criteria_and_benchmark_scale(server):
    with bench_scorer(server.url) as scorer:
        score = scorer.score(sample(["c7", "c9", "c2", "c10", "c5"]))
    assert score.status is Status.OK
    assert score.reward == pytest.approx(6.6) and score.components["benchmark_score"] == pytest.approx(66.0)
    assert score.components["criterion_scores"] == {"c7": 7, "c9": 9, "c2": 2, "c10": 10, "c5": 5}


def test_each_criterion_gets_its_own_critic_request(server):
    before = len(server.faults.bodies)
    with bench_scorer(server.url) as scorer:
        scorer.score(sample(["c3", "c4"]))
    bodies = server.faults.bodies[before:]
    assert len(bodies) == 2
    for body, name in zip(sorted(bodies, key=lambda b: b["messages"][1]["content"].count("c4")), ["c3", "c4"]):
        system, user = body["messages"]
        assert system == {"role": "system", "content": CRITIC_SYSTEM}
        assert user["content"].count(render_criterion(criteria(name)[0])) == 2  # criteria shown twice, as upstream
        assert "** Response **\n```Dear team" in user["content"]


def test_unparseable_critic_is_retried_a_bounded_number_of_times_then_unscored(server):
    before = len(server.faults.bodies)
    with bench_scorer(server.url, max_attempts=3) as scorer:
        good, bad = scorer.score_batch([sample(["c8"]), sample(["c8", "bad one"], id="w2")])
    assert good.reward == 8.0
    assert bad.status is Status.ERROR and bad.reward is None
    assert "w2" in bad.error and "bad one" in bad.error and "3 attempt" in bad.error
    seeds = sorted(b.get("seed") for b in server.faults.bodies[before:] if "bad one" in b["messages"][1]["content"])
    assert seeds == [0, 1, 2]  # each retry is a new request (new seed), never a cached repeat


def test_records_without_criteria_are_errors_naming_the_record(server):
    with bench_scorer(server.url) as scorer:
        score = scorer.score(sample(None, id="nocrit"))
    assert score.status is Status.ERROR and "nocrit" in score.error and "criteria" in score.error


def test_format_errors_get_the_lowest_score(server):
    with bench_scorer(server.url) as scorer:
        no_think, empty = scorer.score_batch([
            Sample("writingbench", "no think", prompt="q", metadata={"criteria": criteria("c9")}),
            sample(["c9"], response="   ")])
    assert no_think.status is empty.status is Status.FORMAT_ERROR
    assert no_think.reward == empty.reward == 1.0


def test_critic_outage_is_unscored():
    with JudgeServer(ScriptedEngine(critic_script), faults=FaultPlan(fail_next=1000)) as server:
        with bench_scorer(server.url) as scorer:
            score = scorer.score(sample(["c9"]))
    assert score.status is Status.ERROR and "critic failed" in score.error


def verdict(text: str, finish: str = "stop"):
    return critic_json(JudgeReply(text, finish)).value


def test_strict_json_parse():
    assert verdict('{"score": 7, "reason": "ok"}') == {"score": 7, "reason": "ok"}
    assert verdict('```json\n{"score": 10, "reason": "ok"}\n```') == {"score": 10, "reason": "ok"}
    assert verdict('{"score": 7.0, "reason": "ok"}') == {"score": 7, "reason": "ok"}
    for bad in ["{'score': 7, 'reason': 'python dict'}", '{"score": "7", "reason": "x"}',
                '{"score": 11, "reason": "x"}', '{"score": 0, "reason": "x"}', '{"score": 7.5, "reason": "x"}',
                '{"score": true, "reason": "x"}', '{"score": 7}', '[7, "x"]', "__import__('os').system('x')",
                'Score: {"score": 7, "reason": "x"}', '{"score": NaN, "reason": "x"}', ""]:
        assert verdict(bad) is None, bad
    assert verdict('{"score": 7, "reason": "ok"}', "length") is None


@pytest.mark.skipif(not WRITINGBENCH.exists(), reason="shared WritingBench data not present")
def test_a_real_benchmark_record_builds_five_critic_requests(server):
    path = WRITINGBENCH / "v2_current" / "requirement" / "length" / "length_subset.jsonl"
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    sample_ = Sample("writingbench", "<think>x</think>\nA response.", prompt=record["query"],
                     metadata={"criteria": record["checklist"]})
    before = len(server.faults.bodies)
    with bench_scorer(server.url) as scorer:
        score = scorer.score(sample_)
    assert len(server.faults.bodies) - before == 5
    assert score.status is Status.OK and len(score.components["criterion_scores"]) == 5
