"""The judge interface every backend implements: requests in, one reply or failure per request out."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

Endpoint = Literal["completions", "chat"]


@dataclass(frozen=True)
class JudgeRequest:
    """One generation request to a judge model.

    ``endpoint="completions"`` sends ``prompt`` as plain text (no chat template: the
    general-verifier protocol); ``"chat"`` sends ``messages`` through the server's chat template.
    """

    endpoint: Endpoint
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) pairs
    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None  # None: the server's default (no top-k cut)
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.endpoint == "completions" and self.prompt is None:
            raise ValueError("a completions request needs a prompt")
        if self.endpoint == "chat" and not self.messages:
            raise ValueError("a chat request needs messages")
        if self.endpoint not in ("completions", "chat"):
            raise ValueError(f"unknown endpoint {self.endpoint!r}")

    @classmethod
    def chat(cls, messages: Sequence[tuple[str, str]], **params: object) -> "JudgeRequest":
        return cls("chat", messages=tuple((str(r), str(c)) for r, c in messages), **params)  # type: ignore[arg-type]

    @classmethod
    def completion(cls, prompt: str, **params: object) -> "JudgeRequest":
        return cls("completions", prompt=prompt, **params)  # type: ignore[arg-type]

    def cache_key(self, model: str) -> str:
        """A digest of the exact request (model, endpoint, text and every sampling parameter)."""
        body = json.dumps([model, self.endpoint, self.prompt, self.messages, self.max_tokens, self.temperature,
                           self.top_p, self.top_k, self.stop, self.seed], ensure_ascii=False)
        return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()

    def sampling(self) -> tuple:
        """The parameters that must be equal for requests to share one engine call."""
        return (self.endpoint, self.max_tokens, self.temperature, self.top_p, self.top_k, self.stop, self.seed)

    def approx_tokens(self) -> int:
        """A cheap upper-ish estimate of the tokens this request uses (for tokens-per-minute limits)."""
        text = self.prompt if self.prompt is not None else "".join(c for _, c in self.messages)
        return len(text) // 3 + 8 + self.max_tokens


@dataclass(frozen=True)
class JudgeReply:
    """The judge's generated text. ``finish_reason`` is ``"stop"`` or ``"length"`` (truncated)."""

    text: str
    finish_reason: str | None = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached: bool = False

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass(frozen=True)
class JudgeFailure:
    """The judge could not answer this request (after retries): its record is unscored, never a reward."""

    error: str
    attempts: int = 1
    transient: bool = True
    detail: dict = field(default_factory=dict)


JudgeResult = JudgeReply | JudgeFailure


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object (anything with ``encode``), or one loaded with transformers from a local path
    (or a hub name where a hub is reachable)."""
    if not isinstance(tokenizer, (str, os.PathLike)) and hasattr(tokenizer, "encode"):
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer))


@runtime_checkable
class JudgeClient(Protocol):
    """A judge backend. ``generate`` never raises for a failed request: it returns a
    ``JudgeFailure`` in that request's place, so one failure cannot take a batch down."""

    model: str

    async def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]: ...

    async def aclose(self) -> None: ...
