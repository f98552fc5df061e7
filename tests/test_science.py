"""Science domain: verifier protocol, reward table, fast path, rule-only mode, failures."""
from __future__ import annotations

import random
import re

import pytest

from judge_server import ContextOverflow, FaultPlan, JudgeServer, ScriptedEngine, free_port_with_nothing_listening
from conftest import load_cases
from judge_support import TEST_TIMEOUTS
from mdreward import Sample, Scorer, ScoringConfig, Status
from mdreward.domains.science import (GENERAL_VERIFIER_PROMPT, GENERAL_VERIFIER_PROMPT_MODEL_CARD, ScienceDomain,
                                      normalize_answer, rule_verdict)
from mdreward.judges.base import JudgeReply
from mdreward.judges.verdicts import final_decision
from mdreward.registry import DomainUnavailable
from mdreward.types import FormatRules

QUESTION = "Which gas makes up most of Earth's atmosphere?"


def verifier(prompt: str):
    """Yes when the student answer contains the ground truth; special answers trigger odd outputs."""
    truth = re.search(r"### Ground Truth Answer: (.*?)\n\n", prompt).group(1)
    student = re.search(r"### Student Answer: (.*?)\n\n", prompt).group(1)
    if "ramble" in student:
        return "Let me think about the units here and whether"
    if "conflict" in student:
        return "Final Decision: Yes\nOn reflection, Final Decision: No"
    if "truncate" in student:
        return "Final Decision: Yes", "length"
    verdict = "Yes" if truth.casefold() in student.casefold() else "No"
    return f"The student's answer says {student!r}.\nFinal Decision: {verdict}"


@pytest.fixture(scope="module")
def server():
    with JudgeServer(ScriptedEngine(verifier), model="TIGER-Lab/general-verifier") as s:
        yield s


@pytest.fixture(scope="module")
def scorer(server):
    judge = {"url": server.url, "model": "TIGER-Lab/general-verifier", "max_retries": 1}
    with Scorer(ScoringConfig(timeouts=TEST_TIMEOUTS, domain_options={"science": {"judge": judge}})) as s:
        yield s


def sample(answer_part: str, reference: str = "Nitrogen", **kw) -> Sample:
    return Sample("science", f"<think>Air is mostly N2.</think> {answer_part}", reference=reference,
                  prompt=QUESTION, **kw)


CASES = load_cases("science_cases.jsonl")  # grouped by what decides them; verifier cases use `verifier` above


@pytest.mark.parametrize("case", CASES, ids=[f"{c['group']}: {c['after_think'][:30]}" for c in CASES])
def test_reward_table(scorer, case):
    score = scorer.score(sample(case["after_think"], case["reference"]))
    assert score.status.value == case["status"], score
    assert score.reward == pytest.approx(case["reward"])
    if case["method"] is not None:
        assert score.components["method"] == case["method"]
    assert -1.0 <= score.reward <= 1.0


def test_no_verdict_is_recorded_not_passed(scorer):
    for marker, problem in (("ramble", "no 'Final Decision"), ("conflict", "conflicting"), ("truncate", "truncated")):
        score = scorer.score(sample(f"<answer>Nitrogen {marker}</answer>"))
        assert score.components["correct"] is False and problem in score.components["verdict_problem"]


def test_the_exact_general_verifier_prompt_goes_to_the_completions_endpoint(scorer, server):
    before = len(server.faults.bodies)
    scorer.score(sample("<answer>Nitrogen gas</answer>"))
    body = server.faults.bodies[before]
    assert "messages" not in body and body["temperature"] == 0.0 and body["model"] == "TIGER-Lab/general-verifier"
    expected = GENERAL_VERIFIER_PROMPT.format(question=QUESTION, ground_truth="Nitrogen", student_answer="Nitrogen gas")
    assert body["prompt"] == expected
    assert expected.startswith("User: ### Question: ") and expected.endswith('output "Final Decision: No". Assistant:')
    assert GENERAL_VERIFIER_PROMPT_MODEL_CARD != GENERAL_VERIFIER_PROMPT
    assert "Do not solve the question by yourself; just check" in GENERAL_VERIFIER_PROMPT_MODEL_CARD


def test_fast_path_does_not_call_the_verifier(scorer, server):
    before = server.faults.calls
    scores = scorer.score_batch([sample("<answer>Nitrogen</answer>"), sample("\\boxed{3}", "3.0")])
    assert [s.reward for s in scores] == [1.0, 1.0]
    assert server.faults.calls == before


def test_length_penalty_unit_is_characters_of_the_normalized_strings():
    domain = ScienceDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS, rule_only=True)
    assert domain.length_penalty("abcdef", "abc") == pytest.approx(0.15)
    assert domain.length_penalty("a" * 50, "abc") == pytest.approx(0.5)
    assert domain.length_penalty("a", "abcdef") == 0.0
    assert normalize_answer("  $ 42 $. ") == "42"
    assert normalize_answer("\\text{ Argon }") == "Argon"


final = lambda text, finish="stop": final_decision(JudgeReply(text, finish))  # noqa: E731


def test_final_decision_parser():
    assert final("blah\nFinal Decision: Yes").value == "Yes"
    assert final("Final Decision: **No**").value == "No"
    assert final("final decision: yes").value == "Yes"
    assert final("Final Decision: Yes\nFinal Decision: Yes").value == "Yes"
    assert final("Final Decision: Yes then Final Decision: No").value is None
    assert final("Final Decision: Yes", "length").value is None
    assert final("The answer is Yes").value is None
    assert final("Final Decision: Yesterday").value is None


def test_rule_only_mode_needs_no_judge_and_is_conservative():
    config = ScoringConfig(domain_options={"science": {"rule_only": True}})
    with Scorer(config) as scorer:
        exact, longer, other = scorer.score_batch([sample("<answer>Nitrogen</answer>"),
                                                   sample("<answer>Nitrogen (N2)</answer>"),
                                                   sample("<answer>Argon</answer>")])
    assert exact.reward == 1.0
    assert longer.reward == 0.0 and longer.components["method"] == "rule_only_undecided"
    assert other.reward == 0.0


def test_without_a_judge_the_domain_is_unavailable_and_records_are_unscored():
    with pytest.raises(DomainUnavailable):
        ScienceDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS)
    with Scorer() as scorer:
        score = scorer.score({"domain": "science", "response": "<think>x</think><answer>1</answer>",
                              "reference": "1", "id": "s1"})
    assert score.status is Status.ERROR and score.reward is None and "s1" in score.error


def test_unreachable_verifier_unscores_only_the_records_that_needed_it():
    judge = {"url": f"http://127.0.0.1:{free_port_with_nothing_listening()}/v1", "model": "v", "max_retries": 1}
    with Scorer(ScoringConfig(timeouts=TEST_TIMEOUTS, domain_options={"science": {"judge": judge}})) as scorer:
        records = [
            {"domain": "science", "id": "needs-judge", "response": "<think>x</think><answer>Nitrogen gas</answer>",
             "reference": "Nitrogen", "prompt": QUESTION},
            {"domain": "science", "id": "fast", "response": "<think>x</think><answer>Nitrogen</answer>",
             "reference": "Nitrogen"},
            {"domain": "science", "id": "bad-format", "response": "Nitrogen", "reference": "Nitrogen"},
            {"domain": "math", "id": "math", "response": "<think>1+1</think> \\boxed{2}", "reference": "2"},
        ]
        scores = scorer.score_batch(records)
    assert len(scores) == 4
    assert scores[0].status is Status.ERROR and scores[0].reward is None and "needs-judge" in scores[0].error
    assert "verifier failed" in scores[0].error
    assert [s.reward for s in scores[1:]] == [1.0, -1.0, 1.0]


def test_500s_then_recovery_scores_every_record():
    faults = FaultPlan(fail_next=2)
    with JudgeServer(ScriptedEngine(verifier), faults=faults) as server:
        judge = {"url": server.url, "model": "v", "max_retries": 3}
        with Scorer(ScoringConfig(timeouts=TEST_TIMEOUTS, domain_options={"science": {"judge": judge}})) as scorer:
            scores = scorer.score_batch([sample(f"<answer>Nitrogen {k}</answer>") for k in "abcdef"])
    assert [s.status for s in scores] == [Status.OK] * 6
    assert all(s.reward == pytest.approx(0.9) for s in scores)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(answer=st.text(max_size=60), reference=st.text(min_size=1, max_size=20))
async def test_rule_only_rewards_are_always_in_the_table(answer, reference):
    domain = ScienceDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS, rule_only=True)
    (score,) = await domain.score_batch([Sample("science", f"<think>t</think><answer>{answer}</answer>",
                                                reference=reference)])
    if score.status is Status.ERROR:  # an empty reference after normalization
        assert score.reward is None and "reference" in score.error
    else:
        assert domain.table.admits(score.reward) and -1.0 <= score.reward <= 1.0


# ---- issue 16: the fast path decides only what is certainly the same answer ------------------------
NOT_CERTAIN = [("5 mW", "5 MW"), ("Co", "CO"), ("co", "CO"), ("CO", "Co"), ("mev", "MeV"), ("3 × 108 m/s",
"3 × 10⁸ m/s"),
               ("23", "2, 3"), ("25", "2,5"), ("0, 1", "1"), ("1 000", "1000"), ("2,000", "2000"), ("H", "h"),
               ("Ｍg", "Mg"), ("10^8", "10⁸"), ("x²", "x2")]


@pytest.mark.parametrize("answer,reference", NOT_CERTAIN)
def test_fast_path_never_passes_what_only_looks_the_same(answer, reference):
    for a, r in ((answer, reference), (reference, answer)):
        verdict = rule_verdict(normalize_answer(a), normalize_answer(r))
        assert verdict is None or verdict[0] is False, (a, r, verdict)


@pytest.mark.parametrize("answer,reference", [("nitrogen", "Nitrogen"), ("Nitrogen gas.", "nitrogen gas"),
                                              ("0.5", "1/2"), ("(C)", "C"), ("$42$", "42")])
def test_fast_path_still_settles_certain_cases(answer, reference):
    assert rule_verdict(normalize_answer(answer), normalize_answer(reference))[0] is True


def test_the_verifier_sees_the_reference_as_given(scorer, server):
    before = len(server.faults.bodies)
    score = scorer.score(sample("<answer>3 × 10^8 m/s</answer>", "3 × 10⁸ m/s"))
    prompt = server.faults.bodies[before]["prompt"]
    assert "### Ground Truth Answer: 3 × 10⁸ m/s\n" in prompt and score.components["method"] == "verifier"


@pytest.mark.parametrize("answer,reference", [("∞", "infinity"), (">", "greater than"), ("→", "to the right"),
                                              ("°", "degrees")])
def test_symbol_only_answers_are_answers(scorer, server, answer, reference):
    before = server.faults.calls
    score = scorer.score(sample(f"<answer>{answer}</answer>", reference))
    assert score.status is Status.OK and score.components["method"] == "verifier"
    assert server.faults.calls == before + 1


async def test_one_records_bad_input_affects_only_that_record(server):
    """At the domain itself (callers other than the Scorer, such as adapters, may pass any text)."""
    rng = random.Random(5)
    huge = "".join(rng.choice("0123456789") for _ in range(5_000))  # not a repeated pattern
    assert len(huge) > 4_300
    domain = ScienceDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS,
                           judge={"url": server.url, "model": "v", "max_retries": 1})
    scores = await domain.score_batch([
        sample("<answer>Nitrogen</answer>"),
        sample(f"<answer>{huge}</answer>", huge[:-1] + str((int(huge[-1]) + 1) % 10)),  # Fraction: > 4,300 digits
        sample(f"<answer>{huge}</answer>", "7"),
        sample("<answer>Nitrogen \ud800</answer>"),          # a lone surrogate in the response: garbled
        Sample("science", "<think>t</think><answer>Nitrogen</answer>", reference="Nitro\udfffgen", id="bad-ref"),
        sample("<answer>Nitrogen gas</answer>"),
    ])
    await domain.aclose()
    assert [s.status for s in scores] == [Status.OK, Status.OK, Status.OK, Status.FORMAT_ERROR, Status.ERROR,
                                          Status.OK]
    assert scores[0].reward == 1.0 and scores[5].reward == pytest.approx(0.8)
    assert scores[1].reward == scores[2].reward == 0.0
    assert "bad-ref" in scores[4].error and "reference" in scores[4].error


def context_limited_verifier(limit_bytes: int):
    """A verifier whose context holds ``limit_bytes`` bytes of prompt plus its max_tokens (HTTP 400 past it)."""
    def reply(prompt: str):
        if len(prompt.encode("utf-8")) > limit_bytes:
            raise ContextOverflow(f"prompt of {len(prompt.encode())} bytes is over the context")
        return verifier(prompt)
    return reply


def test_an_answer_too_long_for_the_verifiers_context_is_wrong_not_unscored():
    rare = "".join(chr(0x20000 + k) for k in range(1_987))  # CJK extension B: 4 bytes (about 3 tokens) each
    with JudgeServer(ScriptedEngine(context_limited_verifier(4096 - 2048))) as server:
        judge = {"url": server.url, "model": "v", "max_retries": 0}
        with Scorer(ScoringConfig(timeouts=TEST_TIMEOUTS, domain_options={"science": {"judge": judge}})) as scorer:
            long_answer, fine = scorer.score_batch([sample(f"<answer>{rare}</answer>", "Nitrogen"),
                                                    sample("<answer>Nitrogen gas</answer>")])
    assert long_answer.status is Status.OK and long_answer.reward == 0.0
    assert long_answer.components["method"] == "answer_too_long"
    assert fine.status is Status.OK and fine.reward == pytest.approx(0.8)


def test_length_penalty_variants_paper_and_code():
    """paper (default): characters, only the excess over the reference. code (General-Reasoner's worker):
    abs difference in tokens of the policy's tokenizer, so a shorter answer is penalised too."""
    from judge_support import tiny_model_dir
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    paper = ScienceDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS, rule_only=True)
    code = ScienceDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS, rule_only=True,
                         length_penalty="code", policy_tokenizer=tiny_model_dir())
    short, long = "N", "Nitrogen gas, the diatomic one"
    assert paper.length_penalty(short, "Nitrogen") == 0.0
    expected = 0.05 * min(abs(len(tokenizer.encode(short)) - len(tokenizer.encode("Nitrogen"))), 10)
    assert expected > 0 and code.length_penalty(short, "Nitrogen") == pytest.approx(expected)
    expected_long = 0.05 * min(abs(len(tokenizer.encode(long)) - len(tokenizer.encode("Nitrogen"))), 10)
    assert code.length_penalty(long, "Nitrogen") == pytest.approx(expected_long)
    with pytest.raises(ValueError, match="policy_tokenizer"):
        ScienceDomain(format_rules=FormatRules(), timeouts=TEST_TIMEOUTS, rule_only=True, length_penalty="code")


def test_the_verifier_gets_the_authors_max_tokens(scorer, server):
    before = len(server.faults.bodies)
    scorer.score(sample("<answer>Nitrogen, as N2</answer>"))
    assert server.faults.bodies[before]["max_tokens"] == 2048
