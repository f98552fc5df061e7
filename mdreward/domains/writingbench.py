"""WritingBench: a critic model scores the response on each of the record's criteria (1-10).

A record carries its query in ``prompt`` and its criteria in ``metadata["criteria"]`` (the
benchmark's ``criteria``/``checklist`` list: dicts with ``name``, ``criteria_description`` and the
score bands, or plain strings). Each criterion gets one chat request with the WritingBench critic
prompt; the critic must answer the JSON ``{"score": 1-10, "reason": ...}``, parsed strictly with
``json.loads``. An unparseable answer is asked again (new seed) up to ``max_attempts`` times, then
the record is unscored. The reward is the mean criterion score (the benchmark reports it x10).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from ..extract import FormatViolation, split_think
from ..judges.base import JudgeClient, JudgeFailure, JudgeRequest
from ..judges.config import build_judge
from ..judges.safety import clip, defuse_control_tokens, escape_for_critic, require_placeholders
from ..judges.verdicts import critic_json
from ..registry import DomainSpec, DomainUnavailable
from ..timeouts import Timeouts
from ..types import FormatRules, RewardTable, Sample, Score

TABLE = RewardTable({"best": 10.0, "worst": 1.0, "format_error": 1.0}, continuous=("mean_score", 1.0, 10.0))

#: System line and user prompt of the WritingBench critic (X-PLUG/WritingBench ``prompt.py`` as
#: released with the critic model, 2025-03); the critic was fine-tuned on this text.
CRITIC_SYSTEM = "You are an expert evaluator with extensive experience in evaluating response of given query."
CRITIC_PROMPT = (
    "Evaluate the Response based on the Query and criteria provided.\n\n"
    "** Criteria **\n```{criteria}```\n\n"
    "** Query **\n```{query}```\n\n"
    "** Response **\n```{response}```\n\n"
    "Provide your evaluation based on the criteria:\n\n```{criteria}```\n\n"
    "Provide reasons for each score, indicating where and why any strengths or deficiencies occur within the "
    "Response. Reference specific passages or elements from the text to support your justification.\n"
    "Ensure that each reason is concrete, with explicit references to the text that aligns with the criteria "
    "requirements.\n\n"
    "Scoring Range: Assign an integer score between 1 to 10\n\n"
    "** Output format **\n"
    "Return the results in the following JSON format, Only output this JSON format and nothing else:\n"
    "```json\n{{\n    \"score\": an integer score between 1 to 10,\n"
    "    \"reason\": \"Specific and detailed justification for the score using text elements.\"\n}}\n```"
)
_FIELDS = ("criteria", "query", "response")


def criteria_of(sample: Sample) -> list[Any] | str:
    """The record's criteria list, or why it has none."""
    criteria = sample.metadata.get("criteria", sample.metadata.get("checklist"))
    if not isinstance(criteria, list) or not criteria:
        return "metadata.criteria must be a non-empty list of criteria"
    for k, item in enumerate(criteria):
        if not isinstance(item, (str, Mapping)) or not item:
            return f"metadata.criteria[{k}] must be a non-empty string or object"
    return criteria


def render_criterion(criterion: Any) -> str:
    """A criterion as the benchmark's script shows it to the critic (``str`` of the dict)."""
    return criterion if isinstance(criterion, str) else str(dict(criterion))


def criterion_name(criterion: Any, index: int) -> str:
    if isinstance(criterion, Mapping) and isinstance(criterion.get("name"), str):
        return criterion["name"]
    return f"criterion_{index + 1}"


class WritingBenchDomain:
    name = "writingbench"

    def __init__(self, *, format_rules: FormatRules, timeouts: Timeouts, table: RewardTable = TABLE,
                 judge: JudgeClient | Mapping[str, Any] | None = None, system_prompt: str = CRITIC_SYSTEM,
                 prompt_template: str = CRITIC_PROMPT, max_attempts: int = 3, max_judge_tokens: int = 2048,
                 temperature: float = 0.7, top_p: float = 0.8, seed: int = 0, max_response_chars: int = 60_000) -> None:
        if judge is None:
            raise DomainUnavailable("writingbench needs a critic judge (--judge-url/--judge-model, or a 'judge' option)")
        require_placeholders(prompt_template, _FIELDS, "writingbench prompt_template")
        if max_attempts < 1:
            raise ValueError("writingbench max_attempts must be >= 1")
        self.table = table
        self.format_rules = format_rules
        self.timeouts = timeouts
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.max_attempts = max_attempts
        self.max_judge_tokens = max_judge_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.max_response_chars = max_response_chars
        self._owns_judge = isinstance(judge, Mapping)
        self.judge = build_judge(judge, timeouts=timeouts, where="writingbench.judge")

    def request(self, criterion: Any, query: str, response: str, attempt: int) -> JudgeRequest:
        fields = {"criteria": defuse_control_tokens(render_criterion(criterion)),
                  "query": defuse_control_tokens(query), "response": escape_for_critic(response)}
        # One pass: "{{"/"}}" are literal braces (str.format style), "{field}" a placeholder.
        user = re.sub(r"\{\{|\}\}|\{(" + "|".join(_FIELDS) + r")\}",
                      lambda m: fields[m.group(1)] if m.group(1) else m.group(0)[0], self.prompt_template)
        return JudgeRequest.chat([("system", self.system_prompt), ("user", user)], max_tokens=self.max_judge_tokens,
                                 temperature=self.temperature, top_p=self.top_p, seed=self.seed + attempt)

    async def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        scores: list[Score | None] = [None] * len(samples)
        # (sample index, criterion index) -> (criterion, query, response)
        pending: dict[tuple[int, int], tuple[Any, str, str]] = {}
        for i, sample in enumerate(samples):
            outcome = self._extract(sample)
            if isinstance(outcome, Score):
                scores[i] = outcome
                continue
            response, criteria = outcome
            for c, criterion in enumerate(criteria):
                pending[(i, c)] = (criterion, sample.prompt or "", response)
        results: dict[tuple[int, int], dict[str, Any] | str] = {}
        problems: dict[tuple[int, int], list[str]] = {key: [] for key in pending}
        for attempt in range(self.max_attempts):
            asking = [key for key in pending if key not in results]
            if not asking:
                break
            replies = await self.judge.generate([self.request(*pending[key], attempt) for key in asking])
            for key, reply in zip(asking, replies):
                if isinstance(reply, JudgeFailure):  # transport retries already happened in the client
                    results[key] = f"critic failed: {reply.error}"
                    continue
                verdict = critic_json(reply)
                if verdict.usable:
                    results[key] = verdict.value
                else:
                    problems[key].append(verdict.problem or "unusable")
        for i, sample in enumerate(samples):
            if scores[i] is None:
                keys = sorted(key for key in pending if key[0] == i)
                scores[i] = self._combine(sample, [(key[1], pending[key][0], results.get(key), problems[key])
                                                   for key in keys])
        return [s for s in scores if s is not None]

    def _extract(self, sample: Sample) -> Score | tuple[str, list[Any]]:
        criteria = criteria_of(sample)
        if isinstance(criteria, str):
            return Score.unscored(f"{sample.where()}: {criteria}")
        split = split_think(sample.response, self.format_rules)
        if isinstance(split, FormatViolation):
            return Score.format_error(self.table["format_error"], split.reason)
        text = split.after.strip()
        if not re.search(r"\w", text):
            return Score.format_error(self.table["format_error"], "no text after </think>")
        return clip(text, self.max_response_chars)[0], criteria

    def _combine(self, sample: Sample, parts: list[tuple[int, Any, Any, list[str]]]) -> Score:
        per_criterion: dict[str, int] = {}
        reasons: dict[str, str] = {}
        for index, criterion, result, problems in parts:
            name = criterion_name(criterion, index)
            if isinstance(result, str):
                return Score.unscored(f"{sample.where()}: criterion {name!r}: {result}", format_ok=True)
            if result is None:
                return Score.unscored(f"{sample.where()}: criterion {name!r}: no valid critic JSON after "
                                      f"{len(problems)} attempt(s): {problems[-1]}", format_ok=True)
            key = name if name not in per_criterion else f"{name} ({index + 1})"
            per_criterion[key] = result["score"]
            reasons[key] = result["reason"][:500]
        mean = sum(per_criterion.values()) / len(per_criterion)
        return Score.ok(mean, format_ok=True, criterion_scores=per_criterion, criterion_reasons=reasons,
                        mean_score=mean, benchmark_score=mean * 10)

    async def aclose(self) -> None:
        if self._owns_judge:
            await self.judge.aclose()


spec = DomainSpec(
    name="writingbench",
    factory=WritingBenchDomain,
    description="WritingBench critic: each criterion scored 1-10 (strict JSON), reward = mean (benchmark x10).",
    table=TABLE,
    required_fields=("response", "prompt"),
    example=Sample(domain="writingbench", response="<think>Plan a short formal note.</think>\nDear team, the "
                   "meeting moves to Friday at 10:00 in room 4. Please confirm. Regards, Ana",
                   prompt="Write a two-sentence note moving the team meeting to Friday 10:00, room 4.",
                   metadata={"criteria": [{"name": "Completeness", "criteria_description": "States day, time and room."}]}),
    top_outcome="best",
    needs=("judge",),
)
