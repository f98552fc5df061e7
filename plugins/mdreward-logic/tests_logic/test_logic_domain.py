"""The logic plugin: its case table, the conformance kit, its verl routing and its entry point."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdreward import Sample, Scorer, Status
from mdreward.registry import load_domains
from mdreward.testing import conformance_tests

CASES = [json.loads(line) for line in (Path(__file__).parent / "logic_cases.jsonl").read_text().splitlines() if line]

test_logic_conformance = conformance_tests("logic")


@pytest.fixture(scope="module")
def scorer():
    with Scorer() as s:
        yield s


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_case_table(scorer, case):
    sample = Sample("logic", f"<think>Work through the clues.</think>\n{case['after_think']}",
                    reference=json.dumps(case["reference"]), id=case["case"])
    score = scorer.score(sample)
    assert score.status.value == case["status"], score
    assert score.reward == pytest.approx(case["reward"], abs=1e-6), score


@pytest.mark.parametrize("reference", ['{"header": ["A"], "rows": [["1", "2"]]}', "not json", "[]", '{"rows": []}',
                                       "[1, 2]"])
def test_an_unusable_reference_is_an_error_naming_the_record(scorer, reference):
    score = scorer.score(Sample("logic", "<think>t</think> <answer>[]</answer>", reference=reference, id="r7"))
    assert score.status is Status.ERROR and score.reward is None and "r7" in (score.error or "")


def test_the_entry_point_registers_logic_from_its_own_package():
    entry = load_domains().entry("logic")
    assert entry.provider == "mdreward-logic"
    assert entry.value.reference_format == "json"


@pytest.mark.parametrize("data_source", ["logic__zebra_puzzle_1.3k", "logic__ordering_puzzle_1.9k",
                                         "logic__zebra_puzzle_dataset"])
def test_the_papers_data_sources_route_to_logic_with_structured_ground_truth(data_source):
    from mdreward.integrations.verl import VerlReward

    ordering = "ordering" in data_source
    ground_truth = ["owl", "robin"] if ordering else {"header": ["House", "Name"], "rows": [["1", "Ann"], ["2", "Bo"]]}
    answer = json.dumps(["Owl", "Robin"] if ordering else {"rows": [["1", "Ann"], ["2", "Jo"]]})
    reward = VerlReward()
    try:
        result = reward.compute_score(data_source, f"<think>t</think> <answer>{answer}</answer>", ground_truth,
                                      {"index": 3})
    finally:
        reward.close()
    assert result["domain"] == "logic" and result["scored"], result
    assert result["score"] == (1.0 if ordering else 0.75)
