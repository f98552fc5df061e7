import pytest

from conftest import load_cases
from mdreward.extract import FormatViolation, boxed_contents, final_answer, last_code_block, split_think
from mdreward.types import FormatRules

CASES = load_cases("extraction.jsonl")


@pytest.mark.parametrize("case", CASES, ids=[f"{c['source']}:{c['name']}" for c in CASES])
def test_extraction_case_table(case):
    rules = FormatRules(think_in_prompt=case.get("think_in_prompt", False))
    split = split_think(case["response"], rules)
    found = split if isinstance(split, FormatViolation) else final_answer(split.after)
    if "format_error" in case:
        assert isinstance(found, FormatViolation), found
        assert case["format_error"] in found.reason
    else:
        assert not isinstance(found, FormatViolation), found
        assert found.text == case["answer"]
        assert found.is_ambiguous == case.get("ambiguous", False)


def test_response_over_the_cap_is_a_format_violation():
    split = split_think("<think>x</think>" + "y" * 50, FormatRules(max_response_chars=40))
    assert isinstance(split, FormatViolation) and "cap" in split.reason


def test_boxed_contents_matches_braces_and_skips_unterminated():
    assert boxed_contents(r"\boxed{a{b}c} \boxed{d") == ["a{b}c"]


def test_last_code_block_takes_the_last_python_fence():
    text = "```python\nfirst()\n```\ntext\n```py\nsecond()\n```\n```text\nnot code\n```"
    assert last_code_block(text) == "second()\n"
    assert isinstance(last_code_block("no code here"), FormatViolation)


def test_unterminated_boxes_and_answer_tags_are_linear():
    """A degenerate loop of thousands of unterminated ``\\boxed{`` / ``<answer>`` (under the response cap) is one
    pass: 14,000 of them took 35-43 s of quadratic brace matching before."""
    import time

    for loop in ("\\boxed{" * 14_000, "\\boxed{x" * 14_000 + "}", "<answer>" * 14_000, "\\boxed " * 14_000):
        started = time.process_time()
        found = final_answer("</think> " + loop + " \\boxed{7}")
        elapsed = time.process_time() - started
        assert elapsed < 0.5, (loop[:20], elapsed)
        assert not isinstance(found, FormatViolation) and found.text == "7"


def test_final_answer_of_applies_the_think_rule_then_reads_the_final_answer():
    from mdreward.extract import final_answer_of

    rules = FormatRules()
    found = final_answer_of("<think>x</think> \\boxed{4}", rules)
    assert not isinstance(found, FormatViolation) and found.text == "4"
    assert isinstance(final_answer_of("\\boxed{4}", rules), FormatViolation)  # no think block
    assert isinstance(final_answer_of("<think>x</think> 4", rules), FormatViolation)  # no final answer
