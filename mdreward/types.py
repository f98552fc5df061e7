"""Typed, immutable samples, scores and reward tables."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Status(str, enum.Enum):
    """Outcome of scoring one sample. Only ``ERROR`` means "could not score"."""

    OK = "ok"
    FORMAT_ERROR = "format_error"
    ERROR = "error"


@dataclass(frozen=True)
class Sample:
    """One rollout to score. ``line`` is the 1-based input line, when it came from a file."""

    domain: str
    response: str
    reference: str | None = None
    prompt: str | None = None
    id: str | None = None
    tests: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    line: int | None = None

    def where(self) -> str:
        """How error messages name this record."""
        parts = []
        if self.id is not None:
            parts.append(f"record {self.id!r}")
        if self.line is not None:
            parts.append(f"line {self.line}")
        return ", ".join(parts) or "record"


@dataclass(frozen=True)
class Score:
    """The result of scoring one sample.

    ``reward`` is ``None`` exactly when ``status`` is ``ERROR``; ``components`` holds the
    parts that made the reward (format_ok, correct, extracted answer, timings, ...).
    """

    reward: float | None
    status: Status
    components: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    answer: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.reward is None) != (self.status is Status.ERROR):
            raise ValueError(f"reward {self.reward!r} does not fit status {self.status.value!r}")
        if self.reward is not None and not math.isfinite(self.reward):
            raise ValueError(f"reward must be finite, got {self.reward!r}")
        object.__setattr__(self, "components", MappingProxyType(dict(self.components)))

    @classmethod
    def ok(cls, reward: float, *, answer: str | None = None, **components: Any) -> "Score":
        return cls(float(reward), Status.OK, components, answer)

    @classmethod
    def format_error(cls, reward: float, reason: str, **components: Any) -> "Score":
        return cls(float(reward), Status.FORMAT_ERROR, {"format_ok": False, **components}, None, reason)

    @classmethod
    def unscored(cls, error: str, **components: Any) -> "Score":
        """Could not score (bad record, missing service, infrastructure failure): never a reward."""
        return cls(None, Status.ERROR, components, None, error)

    @property
    def scored(self) -> bool:
        return self.status is not Status.ERROR

    def to_json(self) -> dict[str, Any]:
        """The fields the JSONL contract adds to a record."""
        out: dict[str, Any] = {"reward": self.reward, "status": self.status.value,
                               "components": dict(self.components)}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class RewardTable:
    """Named reward values of one domain, e.g. ``correct``, ``wrong``, ``format_error``.

    ``continuous`` names outcomes whose reward may lie anywhere in ``[low, high]`` (the
    science length penalty); ``admits`` tells whether a reward can come from this table.
    """

    values: Mapping[str, float]
    continuous: tuple[str, float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", MappingProxyType({k: float(v) for k, v in self.values.items()}))

    def __getitem__(self, outcome: str) -> float:
        try:
            return self.values[outcome]
        except KeyError:
            raise KeyError(f"reward table has no outcome {outcome!r}; it has {sorted(self.values)}") from None

    def replace(self, **overrides: float) -> "RewardTable":
        unknown = set(overrides) - set(self.values)
        if unknown:
            raise ValueError(f"unknown reward outcomes {sorted(unknown)}; known: {sorted(self.values)}")
        return RewardTable({**self.values, **overrides}, self.continuous)

    def admits(self, reward: float) -> bool:
        if any(math.isclose(reward, v, abs_tol=1e-12) for v in self.values.values()):
            return True
        if self.continuous is not None:
            _, low, high = self.continuous
            return low - 1e-12 <= reward <= high + 1e-12
        return False


@dataclass(frozen=True)
class FormatRules:
    """Format rules every domain applies before judging the answer.

    ``think_in_prompt``: the chat template already opened ``<think>`` in the prompt
    (DeepSeek-R1 style), so the response must carry only ``...</think>``.
    ``max_response_chars``: longer responses are a format error (bounded work per sample).
    """

    require_think: bool = True
    think_in_prompt: bool = False
    max_response_chars: int = 200_000


DEFAULT_FORMAT = FormatRules()
