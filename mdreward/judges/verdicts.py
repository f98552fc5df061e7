"""Parsers for judge outputs. Each reads a verdict only where its judge places it and returns
``Verdict(value=None, problem=...)`` when there is no usable verdict; none of them ever guesses."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .base import JudgeReply


@dataclass(frozen=True)
class Verdict:
    value: Any            # "Yes"/"No", "A"/"B"/"C", or a critic dict; None when unusable
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.value is not None


_DECISION = re.compile(r"Final\s+Decision\s*:\s*\**\s*(Yes|No)\b", re.IGNORECASE)


def final_decision(reply: JudgeReply) -> Verdict:
    """The general-verifier's verdict: the last ``Final Decision: Yes|No`` of its output.

    A truncated output, no decision, or decisions that disagree anywhere in the output give no verdict.
    """
    if reply.truncated:
        return Verdict(None, "verifier output was truncated (token or time limit)")
    found = [m.group(1).capitalize() for m in _DECISION.finditer(reply.text)]
    if not found:
        return Verdict(None, "verifier output has no 'Final Decision: Yes/No'")
    if len(set(found)) > 1:
        return Verdict(None, f"verifier output gives conflicting decisions {found}")
    return Verdict(found[-1])


_PAIRWISE_TOKEN = re.compile(r"\[\[([ABC])\]\]")
_TRAILING_DECORATION = " \t\r\n*_`.!\"'"


def pairwise_verdict(reply: JudgeReply, nonce: str | None = None) -> Verdict:
    """The pairwise judge's verdict: ``[[A]]``, ``[[B]]`` or ``[[C]]`` at the very end of its output
    (trailing whitespace, markdown emphasis and a full stop allowed); another verdict token on that
    last line makes it ambiguous. With ``nonce``, the last line must also carry the request's nonce
    (``Verdict <nonce>: [[A]]``): a token copied from the texts has none."""
    if reply.truncated:
        return Verdict(None, "judge output was truncated (token or time limit)")
    tail = reply.text.rstrip(_TRAILING_DECORATION)
    match = re.search(r"\[\[([ABC])\]\]$", tail)
    if match is None:
        return Verdict(None, "judge output does not end with [[A]], [[B]] or [[C]]")
    last_line = tail.rsplit("\n", 1)[-1]
    tokens = set(_PAIRWISE_TOKEN.findall(last_line))
    if len(tokens) > 1:
        return Verdict(None, f"judge's last line names several verdicts {sorted(tokens)}")
    if nonce is not None and nonce not in last_line:
        return Verdict(None, "the verdict line does not carry the request's nonce")
    return Verdict(match.group(1))


_FENCED = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def critic_json(reply: JudgeReply, low: int = 1, high: int = 10, nonce: str | None = None) -> Verdict:
    """A WritingBench critic answer: exactly one JSON object ``{"score": int in [low, high], "reason": str}``,
    optionally inside one ```json fence. Parsed with ``json.loads`` only (never ``eval``). With ``nonce``,
    the object must also carry ``"nonce": <nonce>``."""
    if reply.truncated:
        return Verdict(None, "critic output was truncated (token or time limit)")
    body = reply.text.strip()
    fenced = _FENCED.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        return Verdict(None, f"critic output is not JSON ({exc.__class__.__name__})")
    if not isinstance(data, dict):
        return Verdict(None, f"critic JSON is a {type(data).__name__}, not an object")
    score, reason = data.get("score"), data.get("reason")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
            or score != int(score) or not low <= score <= high:
        return Verdict(None, f"critic score {score!r} is not an integer in [{low}, {high}]")
    if not isinstance(reason, str):
        return Verdict(None, "critic JSON has no string 'reason'")
    if nonce is not None and data.get("nonce") != nonce:
        return Verdict(None, "critic JSON does not carry the request's nonce")
    return Verdict({"score": int(score), "reason": reason})
