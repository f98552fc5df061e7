"""Math: the final answer after ``</think>`` must be symbolically equivalent to the reference.

Pipeline per batch: format rules and extraction in this process; hedges are wrong; identical
(answer, reference) pairs are checked once (batch dedupe + LRU cache); exact numbers compare
as fractions here; everything else goes to ``math_check`` in killable worker processes.
"""
from __future__ import annotations

import asyncio
import re
import time
from fractions import Fraction
from typing import Any, Sequence

from ..extract import FormatViolation, final_answer, split_think
from ..registry import DomainSpec
from ..runtime import KillablePool, LRUCache, TaskTimedOut, WorkerCrashed
from ..timeouts import Timeouts
from ..types import FormatRules, RewardTable, Sample, Score
from .math_numeric import SPACED_DIGITS, certainly_different, terminates

TABLE = RewardTable({"correct": 1.0, "wrong": -0.5, "format_error": -1.0})

MAX_ANSWER_CHARS = 1_000
#: Final answers besides the last one that are checked as restatements; more go straight to the joined check.
MAX_RESTATEMENTS = 3
#: Distinct final answers that may together form a multi-valued answer (``\boxed{1}``, ``\boxed{2}`` for ``1, 2``).
MAX_JOINED_ANSWERS = 32
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_FRACTION = re.compile(r"^([+-])?\\d?frac\{([+-]?\d+)\}\{([+-]?\d+)\}$|^([+-]?\d+)\s*/\s*([+-]?\d+)$")
#: ``\\`` (a row separator, kept), a negative space ``\!`` (removed with the spaces after it, as Math-Verify does) or
#: a spacing command (a space); one token at a time, so ``\\ `` keeps both backslashes.
_SPACING_OR_ROW_BREAK = re.compile(r"\\\\|\\!\s*|\\[,;: ]")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|textnormal|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DIGIT_GROUPS = re.compile(r"^[+-]?\d{1,3}(?:\s\d{3})+(?:\.\d+)?$")
_SPACES_NOT_BETWEEN_WORDS = re.compile(r"\s+(?![A-Za-z0-9])|(?<![A-Za-z0-9])\s+")
_WORDS = re.compile(r"[A-Za-z]+(?:[ '-][A-Za-z]+)*")


def _clean(text: str) -> str:
    """Presentation-only normalization, invisible to Math-Verify: dollars, \\( \\), spacing commands (not the
    ``\\\\`` row separator), \\left/\\right, \\dfrac/\\tfrac, outer braces, a trailing period, runs of spaces."""
    text = text.strip()
    text = re.sub(r"^\$+|\$+$", "", text).strip()
    text = re.sub(r"^\\[(\[]|\\[)\]]$", "", text).strip()
    text = _SPACING_OR_ROW_BREAK.sub(_space_or_row_break, text)
    text = re.sub(r"\\(?:left|right)(?:\.|\b|(?=[^A-Za-z]))", "", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = text.rstrip(".").strip()
    while len(text) > 1 and text[0] == "{" and text[-1] == "}" and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return re.sub(r"\s+", " ", text)


def _space_or_row_break(match: re.Match[str]) -> str:
    token = match.group(0)
    return token if token == "\\\\" else "" if token.startswith("\\!") else " "


def word_answer(text: str) -> str | None:
    """The normalized form of a word or choice answer (``\\text{Yes}``, ``(C)``, ``True``), None for anything else.

    Words compare as strings, never as algebra (as products of symbols ``sey`` would equal ``yes``)."""
    inner = text
    while (unwrapped := _TEXT_WRAPPER.sub(r"\1", inner)) != inner:
        inner = unwrapped
    inner = inner.strip().rstrip(".").strip()
    if re.fullmatch(r"\(\s*[A-Za-z]\s*\)", inner):
        inner = inner.strip("() ")
    if not _WORDS.fullmatch(inner):
        return None
    return re.sub(r"[\s'-]+", "", inner).casefold()


def _without_spaces(text: str) -> str:
    """Spaces removed except between two letters or digits (``\\pi r`` is not ``\\pir``, ``5 6`` is not ``56``)."""
    return _SPACES_NOT_BETWEEN_WORDS.sub("", text)


def _is_word(words: str | None) -> bool:
    """A word of two letters or more (a single letter may be a variable: ``x`` against ``1 \\cdot x``)."""
    return words is not None and len(words) > 1


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def exact_number(text: str) -> Fraction | None:
    """The exact value of a plain integer, decimal or integer fraction; None otherwise."""
    text = text.replace("{,}", "").strip()
    wrapped = _TEXT_WRAPPER.fullmatch(text)
    text = wrapped.group(1).strip() if wrapped else text
    if SPACED_DIGITS.search(text) and not _DIGIT_GROUPS.match(text):
        return None  # "5 6" is two numbers; "10 000" is one
    compact = text.replace(" ", "")
    if _NUMBER.match(compact):
        return Fraction(compact)
    match = _FRACTION.match(compact)
    if match:
        sign, num, den, num2, den2 = match.groups()
        num, den = (num, den) if num is not None else (num2, den2)
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign == "-" else value
    return None


def fast_equivalence(answer: str, reference: str) -> dict[str, Any] | None:
    """Certain verdicts without sympy: the same text up to spaces, two words, a word against algebra, two exact
    numbers, or two simple numbers far apart. None: undecided."""
    if answer == reference or _without_spaces(answer) == _without_spaces(reference):
        return {"equivalent": True, "method": "exact"}
    answer_words, reference_words = word_answer(answer), word_answer(reference)
    if answer_words is not None and reference_words is not None:
        return {"equivalent": answer_words == reference_words, "method": "text"}
    if _is_word(answer_words) or _is_word(reference_words):
        return {"equivalent": False, "method": "text"}  # a word against algebra: y \cdot e \cdot s is not yes
    a, r = exact_number(answer), exact_number(reference)
    if a is None or r is None:
        return {"equivalent": False, "method": "numeric"} if certainly_different(answer, reference) else None
    if a == r:
        return {"equivalent": True, "method": "exact"}
    written_as_decimal = "." in answer
    if written_as_decimal and not terminates(r.denominator):
        return None  # e.g. 4.6666667 for 14/3: Math-Verify's rounding rules decide
    return {"equivalent": False, "method": "exact"}


class MathDomain:
    name = "math"

    def __init__(self, *, format_rules: FormatRules, timeouts: Timeouts, table: RewardTable = TABLE,
                 workers: int | None = None, cache_size: int = 200_000) -> None:
        self.table = table
        self.format_rules = format_rules
        self.timeouts = timeouts
        self._pool = KillablePool("mdreward.domains.math_check:check", workers=workers,
                                  start_timeout_s=timeouts.worker_start_s, shutdown_s=timeouts.shutdown_s)
        self._cache: LRUCache[tuple[str, str], dict[str, Any]] = LRUCache(cache_size)

    async def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        scores: list[Score | None] = [None] * len(samples)
        pending: dict[tuple[str, str], list[int]] = {}
        answers: list[str] = [""] * len(samples)
        several: dict[int, tuple[str, ...]] = {}
        for i, sample in enumerate(samples):
            outcome = self._extract(sample)
            if isinstance(outcome, Score):
                scores[i] = outcome
                continue
            answers[i], others = outcome
            if others:
                several[i] = others
            pending.setdefault((answers[i], _clean(sample.reference or "")), []).append(i)
        verdicts, overrides = await asyncio.gather(
            asyncio.gather(*(self._equivalent(answer, reference) for answer, reference in pending)),
            asyncio.gather(*(self._several_answers(answers[i], others, _clean(samples[i].reference or ""))
                             for i, others in several.items())))
        overriding = {i: verdict for i, verdict in zip(several, overrides) if verdict is not None}
        for indices, verdict in zip(pending.values(), verdicts):
            for i in indices:
                scores[i] = self._score(answers[i], overriding.get(i, verdict), samples[i])
        return [s for s in scores if s is not None]

    def _extract(self, sample: Sample) -> Score | tuple[str, tuple[str, ...]]:
        """The final answer and the other, differently written final answers given with it (in order)."""
        split = split_think(sample.response, self.format_rules)
        if isinstance(split, FormatViolation):
            return Score.format_error(self.table["format_error"], split.reason)
        found = final_answer(split.after)
        if isinstance(found, FormatViolation):
            return Score.format_error(self.table["format_error"], found.reason)
        answer = _clean(found.text)
        squashed = answer.replace(" ", "")
        others = tuple({c.replace(" ", ""): c for c in map(_clean, found.candidates)
                        if c.replace(" ", "") != squashed}.values())
        if len(others) >= MAX_JOINED_ANSWERS:
            return self._score(answer, {"equivalent": False, "method": "several_final_answers"})
        if len(answer) > MAX_ANSWER_CHARS:
            return self._score(answer, {"equivalent": answer == _clean(sample.reference or ""),
                                        "method": "too_long_exact_only"})
        return answer, others

    async def _several_answers(self, answer: str, others: tuple[str, ...], reference: str) -> dict[str, Any] | None:
        """The verdict for a response with several different final answers; None to score the last one alone.

        None when every other final answer is the same value as ``answer`` (``\\boxed{x=2}`` then ``\\boxed{2}``,
        ``\\frac12`` then ``0.5``). Otherwise the answers together (``\\boxed{1}``, ``\\boxed{2}``) must be exactly
        a multi-valued reference (``1, 2``); anything else is a hedge, wrong. A failed check is an error."""
        if len(others) <= MAX_RESTATEMENTS:
            checks = await asyncio.gather(*(self._equivalent(other, answer) for other in others))
            for check in checks:
                if "error" in check:
                    return check
            if all(check["equivalent"] for check in checks):
                return None
        together = ", ".join((*others, answer))
        if len(together) <= MAX_ANSWER_CHARS:
            joined = await self._equivalent(together, reference)
            if "error" in joined:
                return joined
            if joined["equivalent"]:
                return {**joined, "method": "several_final_answers_together"}
        return {"equivalent": False, "method": "several_final_answers"}

    async def _equivalent(self, answer: str, reference: str) -> dict[str, Any]:
        fast = fast_equivalence(answer, reference)
        if fast is not None:
            return fast
        key = (answer, reference)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        started = time.perf_counter()
        t = self.timeouts
        try:
            verdict = await asyncio.wrap_future(
                self._pool.submit((reference, answer, t.math_parse_s, t.math_verify_s), t.math_hard_kill_s))
        except TaskTimedOut:
            verdict = {"equivalent": False, "method": "timeout"}
        except (WorkerCrashed, RuntimeError) as exc:
            return {"error": f"equivalence check failed: {exc}"}
        verdict = {**verdict, "check_s": round(time.perf_counter() - started, 6)}
        self._cache.put(key, verdict)
        return verdict

    def _score(self, answer: str, verdict: dict[str, Any], sample: Sample | None = None) -> Score:
        if "error" in verdict:
            where = sample.where() if sample is not None else "record"
            return Score.unscored(f"{where}: {verdict['error']}", format_ok=True, extracted_answer=answer)
        correct = bool(verdict["equivalent"])
        return Score.ok(self.table["correct" if correct else "wrong"], answer=answer, format_ok=True,
                        correct=correct, extracted_answer=answer, method=verdict["method"],
                        **({"check_s": verdict["check_s"]} if "check_s" in verdict else {}))

    async def warm_up(self) -> None:
        """Start and warm every worker now instead of on the first batch."""
        await asyncio.to_thread(self._pool.start)

    async def aclose(self) -> None:
        self._pool.close()  # quick (kills idle workers); safe at interpreter exit, unlike to_thread


spec = DomainSpec(
    name="math",
    factory=MathDomain,
    description="Final answer (<answer> or last \\boxed{}) symbolically equal to the reference (Math-Verify + exact guards).",
    table=TABLE,
    required_fields=("response", "reference"),
    example=Sample(domain="math", response="<think>2 + 2 = 4</think> The answer is \\boxed{4}.", reference="4"),
)
