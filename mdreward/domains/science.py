"""Science QA: the final answer after ``</think>`` is checked against the reference by the
TIGER-Lab/general-verifier model (or, when certain, by rules alone).

Pipeline per batch: format rules and extraction; "master key" non-answers are a format error;
a rule-based fast path settles certain cases (identical normalized text, the same
multiple-choice letter, equal exact numbers); every other answer goes to the verifier with its
exact plain-text prompt on the completions endpoint at temperature 0. Only the verifier's last
``Final Decision: Yes/No`` counts; a truncated output, no decision or conflicting decisions are
not a pass (the ``wrong`` reward). A judge that cannot be reached gives an unscored record.

Reward (paper, Appendix C.3): equivalent ``1.0 - 0.05 * min(max(len(answer) - len(reference), 0), 10)``
with length counted in characters of the whitespace-normalized strings; not equivalent 0.0;
invalid format -1.0.
"""
from __future__ import annotations

import re
import unicodedata
from fractions import Fraction
from typing import Any, Mapping, Sequence

from ..extract import FormatViolation, final_answer, garbled_reason, split_think
from ..judges.base import JudgeClient, JudgeFailure, JudgeReply, JudgeRequest, load_tokenizer
from ..judges.config import build_judge
from ..judges.safety import (check_injection_policy, clip_to_budget, escape_for_verifier, injection_hits,
                             invalid_text_field, invalid_unicode, require_placeholders, token_counter)
from ..judges.verdicts import final_decision
from ..registry import DomainSpec, DomainUnavailable
from ..timeouts import Timeouts
from ..types import FormatRules, RewardTable, Sample, Score
from .math import exact_number

TABLE = RewardTable({"correct": 1.0, "wrong": 0.0, "format_error": -1.0}, continuous=("correct", 0.5, 1.0))

#: The general-verifier prompt as the General-Reasoner training code (verifier.py) builds it.
GENERAL_VERIFIER_PROMPT = (
    "User: ### Question: {question}\n\n"
    "### Ground Truth Answer: {ground_truth}\n\n"
    "### Student Answer: {student_answer}\n\n"
    "For the above question, please verify if the student's answer is equivalent to the ground truth answer.\n"
    "Do Not solve the question by yourself, just check if the student's answer is equivalent to the ground truth answer.\n"
    "If the student's answer is correct, output \"Final Decision: Yes\". If the student's answer is incorrect, "
    "output \"Final Decision: No\". Assistant:"
)
#: The same prompt as the model card on the Hugging Face hub words it (one sentence differs).
GENERAL_VERIFIER_PROMPT_MODEL_CARD = GENERAL_VERIFIER_PROMPT.replace(
    "Do Not solve the question by yourself, just check", "Do not solve the question by yourself; just check")

#: Answers that say nothing but are known to make LLM judges say "correct" ("master keys").
MASTER_KEYS = frozenset({
    "thought process", "lets solve this problem step by step", "lets solve this step by step", "solution",
    "answer", "the answer is", "final answer", "lets think step by step", "let me think", "step 1",
    "so the answer is", "解", "解答", "答案", "思路", "解题思路", "因此答案是",
})
_MC_LETTER = re.compile(r"^\(?\s*([A-J])\s*\)?[.:]?$")  # upper case only: "h" is not option H


def normalize_answer(text: str) -> str:
    """Whitespace-collapsed, without surrounding ``$``, ``\\text{}`` wrappers or a final full stop.

    No case folding and no NFKC: ``mW`` is not ``MW`` and ``10⁸`` is not ``108``."""
    text = text.strip().rstrip(".").strip()
    if "$" in text:
        text = _DOLLARS.sub("", text).strip()
    if "\\text" in text:
        text = _TEXT_WRAPPER.sub(r"\1", text)
    text = text.rstrip(".").strip()
    return _WHITESPACE.sub(" ", text)


_DOLLARS = re.compile(r"^\$+|\$+$")
_TEXT_WRAPPER = re.compile(r"\\text\{\s*([^{}]*?)\s*\}")
_WHITESPACE = re.compile(r"\s+")


def is_master_key(answer: str, reference: str) -> bool:
    """A content-free answer (no letter, digit or symbol such as ``∞`` or ``>``, or a bare reasoning
    opener) that the reference is not."""
    if answer == reference:
        return False
    if not any(unicodedata.category(c)[0] in "LNS" for c in answer):
        return True
    words = " ".join(re.sub(r"[^\w\s]", "", answer.casefold()).replace("_", " ").split())
    return words in MASTER_KEYS


def same_text(answer: str, reference: str) -> bool:
    """Certainly the same text: equal, or equal but for the case of a leading letter that starts a word of
    three or more lowercase letters (``nitrogen`` = ``Nitrogen``; ``CO`` != ``Co``, ``mW`` != ``MW``)."""
    if answer == reference:
        return True
    if len(answer) != len(reference) or answer[1:] != reference[1:] or answer[:1].lower() != reference[:1].lower():
        return False
    head = re.match(r"[^\W\d_]+", answer[1:])
    return head is not None and len(head.group(0)) >= 2 and head.group(0).islower()


#: Exact comparison of numbers written with this many characters at most (``Fraction`` refuses
#: integers of more than 4,300 digits, and no science answer needs more).
MAX_EXACT_NUMBER_CHARS = 64


def _plain_number(text: str) -> Fraction | None:
    """A plain decimal or fraction, written without spaces or commas (``2, 3`` and ``2,5`` are not numbers
    here: a list and a decimal comma are the verifier's to read)."""
    if len(text) > MAX_EXACT_NUMBER_CHARS or " " in text or "," in text:
        return None
    return exact_number(text)


def rule_verdict(answer: str, reference: str) -> tuple[bool, str] | None:
    """A certain verdict without the verifier, or None when only the verifier can tell."""
    if same_text(answer, reference):
        return True, "identical"
    a_letter, r_letter = _MC_LETTER.match(answer), _MC_LETTER.match(reference)
    if a_letter and r_letter:
        same = a_letter.group(1) == r_letter.group(1)
        return same, "choice_letter"
    a_num, r_num = _plain_number(answer), _plain_number(reference)
    if a_num is not None and r_num is not None and a_num == r_num:
        return True, "exact_number"
    return None


LENGTH_PENALTIES = ("paper", "code")


class ScienceDomain:
    name = "science"

    def __init__(self, *, format_rules: FormatRules, timeouts: Timeouts, table: RewardTable = TABLE,
                 judge: JudgeClient | Mapping[str, Any] | None = None, rule_only: bool = False,
                 prompt_template: str = GENERAL_VERIFIER_PROMPT, max_judge_tokens: int = 2048,
                 judge_context_tokens: int = 4096, length_penalty: str = "paper",
                 policy_tokenizer: Any = None, length_penalty_per_char: float = 0.05,
                 length_penalty_max_chars: int = 10, max_answer_chars: int = 2_000, fast_path: bool = True,
                 injection: str = "penalize") -> None:
        if judge is None and not rule_only:
            raise DomainUnavailable("science needs a verifier judge (--judge-url/--judge-model, or a 'judge' "
                                    "option), or rule_only=True for the weaker rule-based check")
        require_placeholders(prompt_template, ("question", "ground_truth", "student_answer"), "science prompt_template")
        if length_penalty not in LENGTH_PENALTIES:
            raise ValueError(f"science length_penalty must be one of {LENGTH_PENALTIES}, got {length_penalty!r}")
        if length_penalty == "code" and policy_tokenizer is None:
            raise ValueError("science length_penalty='code' counts tokens of the policy's tokenizer: "
                             "give policy_tokenizer (a path or a tokenizer object)")
        self.table = table
        self.format_rules = format_rules
        self.timeouts = timeouts
        self.rule_only = rule_only
        self.prompt_template = prompt_template
        self.max_judge_tokens = max_judge_tokens
        self.judge_context_tokens = judge_context_tokens
        self.length_penalty_variant = length_penalty
        self.policy_tokenizer = load_tokenizer(policy_tokenizer) if policy_tokenizer is not None else None
        self.penalty_per_char = length_penalty_per_char
        self.penalty_max_chars = length_penalty_max_chars
        self.max_answer_chars = max_answer_chars
        self.fast_path = fast_path
        self.injection = check_injection_policy(injection, "science")
        self._owns_judge = isinstance(judge, Mapping)
        self.judge = build_judge(judge, timeouts=timeouts, where="science.judge") if judge is not None else None
        self._count = token_counter(self.judge)
        empty = _fill(prompt_template, question="", ground_truth="", student_answer="")
        self._input_budget = judge_context_tokens - max_judge_tokens - self._count(empty) - 8

    async def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        scores: list[Score | None] = [None] * len(samples)
        asks: list[tuple[int, str, str, list[str], JudgeRequest]] = []
        for i, sample in enumerate(samples):
            outcome = self._prejudge(sample)
            if isinstance(outcome, Score):
                scores[i] = outcome
            else:
                asks.append((i, *outcome))
        if asks:
            assert self.judge is not None
            replies = await self.judge.generate([request for *_, request in asks])
            for (i, answer, reference, hits, _), reply in zip(asks, replies):
                scores[i] = self._from_reply(samples[i], answer, reference, hits, reply)
        return [s for s in scores if s is not None]

    def _prejudge(self, sample: Sample) -> Score | tuple[str, str, list[str], JudgeRequest]:
        """The record's score, or (answer, reference, injection hits to report, verifier request)."""
        bad_field = invalid_text_field(sample, ("reference", "prompt"))
        if bad_field:
            return Score.unscored(bad_field)
        split = split_think(sample.response, self.format_rules)
        if isinstance(split, FormatViolation):
            return Score.format_error(self.table["format_error"], split.reason)
        garbled = garbled_reason(split.after) or invalid_unicode(split.after)
        if garbled:
            return Score.format_error(self.table["format_error"], f"garbled text after </think>: {garbled}")
        found = final_answer(split.after)
        if isinstance(found, FormatViolation):
            return Score.format_error(self.table["format_error"], found.reason)
        answer = normalize_answer(found.text)
        given_reference = (sample.reference or "").strip()
        reference = normalize_answer(given_reference)
        if not reference:
            return Score.unscored(f"{sample.where()}: field 'reference' is empty")
        if is_master_key(answer, reference):
            return Score.format_error(self.table["format_error"], f"the final answer {answer[:40]!r} is not an answer",
                                      extracted_answer=answer)
        candidates = [normalize_answer(c) for c in found.candidates]
        if any(not same_text(c, answer) for c in candidates):  # a hedge, not a restatement
            return self._verdict_score(answer, reference, False, "several_final_answers")
        if self.fast_path or self.rule_only:
            rule = rule_verdict(answer, reference)
            if rule is not None and (rule[0] or rule[1] == "choice_letter"):
                return self._verdict_score(answer, reference, rule[0], rule[1])
        if len(answer) > self.max_answer_chars:
            return self._verdict_score(answer, reference, False, "answer_too_long")
        hits = injection_hits(answer) if self.injection != "off" else []
        if hits and self.injection == "penalize":
            return self._verdict_score(answer, reference, False, "injected_instruction", injection_hits=hits)
        if self.rule_only:
            return self._verdict_score(answer, reference, False, "rule_only_undecided")
        student, truth = escape_for_verifier(answer), escape_for_verifier(given_reference)
        room = self._input_budget - self._count(truth) - self._count(student)
        if room < min(self._count(sample.prompt or ""), 64):
            return self._verdict_score(answer, reference, False, "answer_too_long",
                                       verdict_problem="the answer does not fit the verifier's context")
        question, _ = clip_to_budget(escape_for_verifier(sample.prompt or ""), room, self._count)
        prompt = _fill(self.prompt_template, question=question, ground_truth=truth, student_answer=student)
        request = JudgeRequest.completion(prompt, max_tokens=self.max_judge_tokens, temperature=0.0)
        return answer, reference, hits, request

    def _from_reply(self, sample: Sample, answer: str, reference: str, hits: list[str],
                    reply: JudgeReply | JudgeFailure) -> Score:
        if isinstance(reply, JudgeFailure):
            return Score.unscored(f"{sample.where()}: verifier failed: {reply.error}", format_ok=True,
                                  extracted_answer=answer, judge_attempts=reply.attempts)
        verdict = final_decision(reply)
        extra = {"judge_output": reply.text[-500:], "judge_cached": reply.cached}
        if hits:  # only under injection="report": "penalize" never asks the verifier
            extra["injection_hits"] = hits
        if not verdict.usable:
            return self._verdict_score(answer, reference, False, "verifier", verdict_problem=verdict.problem, **extra)
        return self._verdict_score(answer, reference, verdict.value == "Yes", "verifier", **extra)

    def length_penalty(self, answer: str, reference: str) -> float:
        """``paper`` (default): ``per_char * min(max(len(answer) - len(reference), 0), max_chars)`` in characters,
        never negative. ``code`` (the General-Reasoner code): ``abs`` of the difference in tokens of the
        policy's tokenizer, so a shorter answer is penalised too."""
        if self.length_penalty_variant == "code":
            tokenizer = self.policy_tokenizer
            assert tokenizer is not None  # required by the constructor for this variant
            excess = abs(len(tokenizer.encode(answer)) - len(tokenizer.encode(reference)))
        else:
            excess = max(len(answer) - len(reference), 0)
        return self.penalty_per_char * min(excess, self.penalty_max_chars)

    def _verdict_score(self, answer: str, reference: str, equivalent: bool, method: str, **extra: Any) -> Score:
        if not equivalent:
            return Score.ok(self.table["wrong"], answer=answer, format_ok=True, correct=False,
                            extracted_answer=answer, method=method, length_penalty=0.0, **extra)
        penalty = self.length_penalty(answer, reference)
        return Score.ok(self.table["correct"] - penalty, answer=answer, format_ok=True, correct=True,
                        extracted_answer=answer, method=method, length_penalty=round(penalty, 6), **extra)

    async def aclose(self) -> None:
        if self._owns_judge and self.judge is not None:
            await self.judge.aclose()


def _fill(template: str, **fields: str) -> str:
    """Substitute ``{name}`` placeholders in one pass, so text inside a field is never re-expanded."""
    return re.sub(r"\{(" + "|".join(fields) + r")\}", lambda m: fields[m.group(1)], template)


spec = DomainSpec(
    name="science",
    factory=ScienceDomain,
    description="Final answer judged against the reference by TIGER-Lab/general-verifier (rule fast path; "
                "1.0 minus a length penalty of 0.05 per extra character, at most 10).",
    table=TABLE,
    required_fields=("response", "reference"),
    example=Sample(domain="science", response="<think>Noble gases have full shells.</think> <answer>Argon</answer>",
                   reference="Argon", prompt="Which noble gas is the most abundant in Earth's atmosphere?"),
    needs=("judge",),
)
