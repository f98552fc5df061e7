"""A judge behind any OpenAI-compatible HTTP endpoint (vLLM or SGLang servers, hosted APIs).

Concurrency limit, completion batching (several prompts in one ``/v1/completions`` call, which
vLLM and SGLang accept), per-request timeouts and a total budget from ``Timeouts``, retries with
exponential backoff and full jitter on transient errors, optional requests/tokens-per-minute
limits, and a cache keyed by the exact request (identical in-flight requests share one call).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Sequence

from ..runtime import LRUCache
from ..timeouts import DEFAULT_TIMEOUTS, Timeouts
from .base import JudgeFailure, JudgeReply, JudgeRequest, JudgeResult
from .limits import MinuteBudget, backoff_delay

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying: timeouts, conflicts, rate limits and server-side failures.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class MalformedResponse(Exception):
    """The server answered 200 with a body that is not a usable completion."""


@dataclass
class JudgeStats:
    calls: int = 0          # HTTP calls attempted
    retries: int = 0
    failures: int = 0       # requests given up on
    cache_hits: int = 0
    shared_in_flight: int = 0


class OpenAIJudge:
    """Judge client for an OpenAI-compatible server. Build one per endpoint and model."""

    def __init__(self, *, base_url: str, model: str, api_key: str | None = None,
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, max_concurrency: int = 64, batch_size: int = 1,
                 max_retries: int = 4, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, cache_size: int = 50_000,
                 extra_body: dict[str, Any] | None = None, seed: int | None = None,
                 http_backend: str = "auto") -> None:
        if http_backend not in ("auto", "aiohttp", "httpx"):
            raise ValueError(f"http_backend must be 'auto', 'aiohttp' or 'httpx', got {http_backend!r}")
        if max_concurrency < 1 or batch_size < 1 or max_retries < 0:
            raise ValueError("max_concurrency and batch_size must be >= 1, max_retries >= 0")
        self.base_url = base_url
        self.model = model
        self.timeouts = timeouts
        self.max_concurrency = max_concurrency
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        self.http_backend = http_backend
        self.stats = JudgeStats()
        self._api_key = api_key
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._cache: LRUCache[str, JudgeReply] | None = LRUCache(cache_size) if cache_size > 0 else None
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._request_budget: MinuteBudget | None = None
        self._token_budget: MinuteBudget | None = None
        self._in_flight: dict[str, asyncio.Future[JudgeResult]] = {}

    # ---- public ---------------------------------------------------------------------------
    async def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        self._bind_loop()
        results: list[JudgeResult | None] = [None] * len(requests)
        waiting: list[tuple[int, asyncio.Future[JudgeResult]]] = []
        mine: dict[str, tuple[JudgeRequest, asyncio.Future[JudgeResult]]] = {}
        for i, request in enumerate(requests):
            key = request.cache_key(self.model)
            cached = self._cache.get(key) if self._cache is not None else None
            if cached is not None:
                self.stats.cache_hits += 1
                results[i] = JudgeReply(cached.text, cached.finish_reason, cached.prompt_tokens,
                                        cached.completion_tokens, cached=True)
                continue
            future = self._in_flight.get(key)
            if future is None:
                future = asyncio.get_running_loop().create_future()
                self._in_flight[key] = future
                mine[key] = (request, future)
            else:
                self.stats.shared_in_flight += 1
            waiting.append((i, future))
        try:
            await asyncio.gather(*(self._run_chunk(chunk) for chunk in self._chunks(list(mine.items()))))
        finally:
            for key, (_, future) in mine.items():
                self._in_flight.pop(key, None)
                if not future.done():  # cancelled half-way: release anyone sharing the call
                    future.set_result(JudgeFailure("judge call was cancelled"))
        for i, future in waiting:
            results[i] = await future
        return [r for r in results if r is not None]

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # ---- internals ------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._client is not None:
            return
        if self._loop is not None and not self._loop.is_closed() and self._in_flight:
            raise RuntimeError("an OpenAIJudge is in use on another event loop")
        import openai  # the `judge` extra

        self._loop = loop
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url, max_retries=0, timeout=self.timeouts.judge_request_s,
            api_key=self._api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY", **self._http_client())
        self._semaphore = asyncio.Semaphore(self.max_concurrency)
        self._request_budget = MinuteBudget(self._rpm) if self._rpm else None
        self._token_budget = MinuteBudget(self._tpm) if self._tpm else None

    def _http_client(self) -> dict[str, Any]:
        """The aiohttp transport where available: httpx's own pool slows down sharply at high
        concurrency (see docs/judges.md, benchmark). ``http_backend="httpx"`` keeps openai's default."""
        if self.http_backend == "httpx":
            return {}
        import openai

        try:
            return {"http_client": openai.DefaultAioHttpClient()}
        except (AttributeError, RuntimeError, ImportError):  # older openai, or aiohttp not installed
            if self.http_backend == "aiohttp":
                raise RuntimeError("http_backend='aiohttp' needs openai>=1.80 with aiohttp installed "
                                   "(pip install 'openai[aiohttp]')") from None
            return {}

    def _chunks(self, items: list[tuple[str, tuple[JudgeRequest, asyncio.Future[JudgeResult]]]]):
        """Completion requests with equal sampling parameters go out together, ``batch_size`` at a time."""
        groups: dict[tuple, list] = {}
        for key, (request, future) in items:
            if request.endpoint == "completions" and self.batch_size > 1:
                params = (request.max_tokens, request.temperature, request.top_p, request.stop, request.seed)
                groups.setdefault(params, []).append((key, request, future))
            else:
                groups[("single", key)] = [(key, request, future)]
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                yield members[start:start + self.batch_size]

    async def _run_chunk(self, chunk: list[tuple[str, JudgeRequest, asyncio.Future[JudgeResult]]]) -> None:
        requests = [request for _, request, _ in chunk]
        try:
            outcomes = await asyncio.wait_for(self._call_with_retries(requests), self.timeouts.judge_total_s)
        except asyncio.TimeoutError:
            outcomes = [JudgeFailure(f"judge gave no answer within the total budget of "
                                     f"{self.timeouts.judge_total_s}s")] * len(requests)
        for (key, _, future), outcome in zip(chunk, outcomes):
            if isinstance(outcome, JudgeReply):
                if self._cache is not None:
                    self._cache.put(key, outcome)
            else:
                self.stats.failures += 1
            if not future.done():
                future.set_result(outcome)

    async def _call_with_retries(self, requests: list[JudgeRequest]) -> list[JudgeResult]:
        import openai

        attempt = 0
        while True:
            try:
                return list(await self._call_limited(requests))
            except openai.APIStatusError as exc:
                transient = exc.status_code in TRANSIENT_STATUSES
                error = f"judge returned HTTP {exc.status_code}: {_short(exc.message)}"
            except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
                transient, error = True, f"judge unreachable or answered garbage: {type(exc).__name__}: {_short(str(exc))}"
            except (MalformedResponse, ValueError, TypeError, KeyError, AttributeError) as exc:
                transient, error = True, f"judge answered a malformed response: {_short(repr(exc))}"
            attempt += 1
            if not transient or attempt > self.max_retries:
                log.warning("judge %s: giving up after %d attempt(s): %s", self.model, attempt, error)
                return [JudgeFailure(error, attempts=attempt, transient=transient)] * len(requests)
            self.stats.retries += 1
            await asyncio.sleep(backoff_delay(attempt - 1, base_s=self.timeouts.judge_backoff_s,
                                              cap_s=self.timeouts.judge_backoff_max_s, rng=self._rng))

    async def _call_limited(self, requests: list[JudgeRequest]) -> list[JudgeReply]:
        assert self._semaphore is not None
        estimate = sum(r.approx_tokens() for r in requests)
        if self._request_budget is not None:
            await self._request_budget.acquire(1)
        if self._token_budget is not None:
            await self._token_budget.acquire(estimate)
        async with self._semaphore:
            self.stats.calls += 1
            replies, used = await self._call(requests)
        if self._token_budget is not None and used is not None:
            self._token_budget.refund(estimate - used)
        return replies

    async def _call(self, requests: list[JudgeRequest]) -> tuple[list[JudgeReply], int | None]:
        """One HTTP call. The body goes through the openai client's plain ``post`` (auth, base URL,
        status errors) and comes back as JSON that is validated here: the typed ``create`` helpers
        cost about 1.5x the CPU per request, which caps throughput at high concurrency."""
        first = requests[0]
        body: dict[str, Any] = {"model": self.model, "max_tokens": first.max_tokens,
                                "temperature": first.temperature, "top_p": first.top_p}
        if first.stop:
            body["stop"] = list(first.stop)
        if first.seed is not None:
            body["seed"] = first.seed
        body.update(self.extra_body)
        if first.endpoint == "completions":
            body["prompt"] = [r.prompt for r in requests] if len(requests) > 1 else first.prompt
            data = await self._client.post("/completions", body=body, cast_to=object)
            choices = sorted(_choices(data, len(requests)), key=lambda c: c.get("index", 0))
            texts = [(c.get("text"), c.get("finish_reason")) for c in choices]
        else:
            body["messages"] = [{"role": role, "content": content} for role, content in first.messages]
            data = await self._client.post("/chat/completions", body=body, cast_to=object)
            message = _choices(data, 1)[0].get("message")
            if not isinstance(message, dict):
                raise MalformedResponse("chat choice has no message")
            texts = [(message.get("content"), _choices(data, 1)[0].get("finish_reason"))]
        for text, _ in texts:
            if not isinstance(text, str):
                raise MalformedResponse(f"completion text is {type(text).__name__}, not a string")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        used = (prompt_tokens or 0) + (completion_tokens or 0) if usage else None
        single = len(requests) == 1
        return [JudgeReply(text, finish if isinstance(finish, str) else None,
                           prompt_tokens if single else None, completion_tokens if single else None)
                for text, finish in texts], used


def _choices(data: Any, expected: int) -> list[dict]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != expected or not all(isinstance(c, dict) for c in choices):
        raise MalformedResponse(f"expected {expected} choice(s) in the response, got {_short(repr(choices), 80)}")
    return choices


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
