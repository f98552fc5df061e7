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

TABLE = RewardTable({"correct": 1.0, "wrong": -0.5, "format_error": -1.0})

#: Markers of a hedged answer; one in the answer but not in the reference makes it wrong.
HEDGE_MARKERS = (r"\pm", "±", r"\mp", "∓", r"\lor", r"\vee", " or ", r"\text{or}", r"\text{ or }", r"\quad\text{or}")
MAX_ANSWER_CHARS = 1_000
#: Final answers besides the last one that are checked as restatements; more is a hedge outright.
MAX_RESTATEMENTS = 3
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_FRACTION = re.compile(r"^([+-])?\\d?frac\{([+-]?\d+)\}\{([+-]?\d+)\}$|^([+-]?\d+)\s*/\s*([+-]?\d+)$")


def _clean(text: str) -> str:
    """Presentation-only normalization: dollars, \\( \\), thin spaces, \\text{}, \\left/\\right,
    \\dfrac, outer braces, a trailing period."""
    text = text.strip()
    text = re.sub(r"^\$+|\$+$", "", text).strip()
    text = re.sub(r"^\\\(|\\\)$", "", text).strip()
    text = re.sub(r"\\[,;!:]|\\ ", "", text)
    text = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", text)
    text = re.sub(r"\\left\b|\\right\b", "", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = text.rstrip(".").strip()
    while len(text) > 1 and text[0] == "{" and text[-1] == "}" and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return re.sub(r"\s+", " ", text)


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def exact_number(text: str) -> Fraction | None:
    """The exact value of a plain integer, decimal or integer fraction; None otherwise."""
    compact = text.replace(" ", "").replace("{,}", "")
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


def _terminates(value: Fraction) -> bool:
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def fast_equivalence(answer: str, reference: str) -> bool | None:
    """Certain verdicts without sympy: identical text, or two exact numbers. None: undecided."""
    if answer == reference:
        return True
    a, r = exact_number(answer), exact_number(reference)
    if a is None or r is None:
        return None
    if a == r:
        return True
    written_as_decimal = "." in answer
    if written_as_decimal and not _terminates(r):
        return None  # e.g. 4.6666667 for 14/3: Math-Verify's rounding rules decide
    return False


def is_hedged(answer: str, reference: str) -> bool:
    return any(marker in answer and marker not in reference for marker in HEDGE_MARKERS)


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
        restated: dict[int, tuple[str, ...]] = {}
        for i, sample in enumerate(samples):
            outcome = self._extract(sample)
            if isinstance(outcome, Score):
                scores[i] = outcome
                continue
            answers[i], others = outcome
            if others:
                restated[i] = others
            pending.setdefault((answers[i], _clean(sample.reference or "")), []).append(i)
        verdicts, consistency = await asyncio.gather(
            asyncio.gather(*(self._equivalent(answer, reference) for answer, reference in pending)),
            asyncio.gather(*(self._restates_one_answer(answers[i], others) for i, others in restated.items())))
        inconsistent = {i: verdict for i, verdict in zip(restated, consistency) if verdict is not None}
        for (key, indices), verdict in zip(pending.items(), verdicts):
            for i in indices:
                scores[i] = self._score(answers[i], inconsistent.get(i, verdict), samples[i])
        return [s for s in scores if s is not None]

    def _extract(self, sample: Sample) -> Score | tuple[str, tuple[str, ...]]:
        """The final answer and the other, differently written final answers given with it."""
        split = split_think(sample.response, self.format_rules)
        if isinstance(split, FormatViolation):
            return Score.format_error(self.table["format_error"], split.reason)
        found = final_answer(split.after)
        if isinstance(found, FormatViolation):
            return Score.format_error(self.table["format_error"], found.reason)
        answer = _clean(found.text)
        reference = _clean(sample.reference or "")
        squashed = answer.replace(" ", "")
        others = tuple({c.replace(" ", ""): c for c in map(_clean, found.candidates)
                        if c.replace(" ", "") != squashed}.values())
        if len(others) > MAX_RESTATEMENTS:
            return self._score(answer, {"equivalent": False, "method": "several_final_answers"})
        if is_hedged(answer, reference):
            return self._score(answer, {"equivalent": False, "method": "hedged"})
        if len(answer) > MAX_ANSWER_CHARS:
            return self._score(answer, {"equivalent": answer == reference, "method": "too_long_exact_only"})
        return answer, others

    async def _restates_one_answer(self, answer: str, others: tuple[str, ...]) -> dict[str, Any] | None:
        """None when every other final answer is the same value as ``answer`` (``\\boxed{x=2}`` then
        ``\\boxed{2}``, ``\\frac12`` then ``0.5``); otherwise the verdict that overrides the score: a
        hedge (wrong), or an error when a check failed."""
        checks = await asyncio.gather(*(self._equivalent(other, answer) for other in others))
        for check in checks:
            if "error" in check:
                return check
        if all(check["equivalent"] for check in checks):
            return None
        return {"equivalent": False, "method": "several_final_answers"}

    async def _equivalent(self, answer: str, reference: str) -> dict[str, Any]:
        fast = fast_equivalence(answer, reference)
        if fast is not None:
            return {"equivalent": fast, "method": "exact"}
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
