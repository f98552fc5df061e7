"""The table plugin: its case table, the conformance kit, its verl routing and its entry point."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdreward import Sample, Scorer, Status
from mdreward.registry import load_domains
from mdreward.testing import conformance_tests

CASES = [json.loads(line) for line in (Path(__file__).parent / "table_cases.jsonl").read_text().splitlines() if line]

test_table_conformance = conformance_tests("table")


@pytest.fixture(scope="module")
def scorer():
    with Scorer() as s:
        yield s


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_case_table(scorer, case):
    sample = Sample("table", f"<think>Read the table.</think> {case['after_think']}", reference=case["reference"],
                    id=case["case"])
    score = scorer.score(sample)
    assert score.status.value == case["status"], score
    assert score.reward == case["reward"], score


@pytest.mark.parametrize("reference", ["", "  ", "a||b", "a|"])
def test_an_unusable_reference_is_an_error_naming_the_record(scorer, reference):
    score = scorer.score(Sample("table", "<think>t</think> \\boxed{a}", reference=reference, id="r9"))
    assert score.status is Status.ERROR and score.reward is None and "r9" in (score.error or "")


def test_the_entry_point_registers_table_from_its_own_package():
    assert load_domains().entry("table").provider == "mdreward-table"


@pytest.mark.parametrize("data_source", ["table__hitab_4.3k", "table__hitab"])
def test_the_papers_data_source_routes_to_table(data_source):
    from mdreward.integrations.verl import VerlReward

    reward = VerlReward()
    try:
        result = reward.compute_score(data_source, "<think>t</think> \\boxed{Quebec|Ontario}", "ontario|quebec")
    finally:
        reward.close()
    assert result["domain"] == "table" and result["score"] == 1.0 and result["acc"] == 1.0, result
