"""A judge behind any OpenAI-compatible HTTP endpoint (vLLM or SGLang servers, hosted APIs).

Concurrency limit, completion batching (several prompts in one ``/v1/completions`` call, which
vLLM and SGLang accept), per-call timeouts and a total budget from ``Timeouts``, retries with
exponential backoff and full jitter on transient errors (honouring ``Retry-After``), optional
requests/tokens-per-minute limits, and a cache keyed by the exact request (identical in-flight
requests share one call). The HTTP call itself goes through a transport (``http_transport``).
"""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any, Sequence

from ..runtime import LRUCache
from ..timeouts import DEFAULT_TIMEOUTS, Timeouts
from .base import JudgeFailure, JudgeReply, JudgeRequest, JudgeResult, load_tokenizer
from .http_transport import (HTTPStatusFailure, JudgeTransport, MalformedResponse, Unreachable,
                             check_installed, make_transport)
from .limits import MinuteBudget, backoff_delay

log = logging.getLogger(__name__)

#: HTTP statuses worth retrying: timeouts, conflicts, rate limits and server-side failures.
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

_Item = tuple[str, JudgeRequest, "asyncio.Future[JudgeResult]"]


@dataclass
class JudgeStats:
    calls: int = 0          # HTTP calls attempted
    retries: int = 0
    failures: int = 0       # requests given up on
    cache_hits: int = 0
    shared_in_flight: int = 0


class OpenAIJudge:
    """Judge client for an OpenAI-compatible server. Build one per endpoint and model.

    ``transport``: ``"aiohttp"`` (default, the protocol spoken directly), ``"openai"`` (through the
    ``openai`` SDK over aiohttp) or ``"openai-httpx"`` (the SDK's default httpx transport).
    """

    def __init__(self, *, base_url: str, model: str, api_key: str | None = None,
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, max_concurrency: int = 64, batch_size: int = 1,
                 max_retries: int = 4, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, cache_size: int = 50_000,
                 extra_body: dict[str, Any] | None = None, seed: int | None = None,
                 transport: str = "aiohttp", tokenizer: Any = None) -> None:
        check_installed(transport)
        if max_concurrency < 1 or batch_size < 1 or max_retries < 0:
            raise ValueError("max_concurrency and batch_size must be >= 1, max_retries >= 0")
        self.base_url = base_url
        self.model = model
        self.timeouts = timeouts
        self.max_concurrency = max_concurrency
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        self.transport = transport
        self.stats = JudgeStats()
        self._api_key = api_key
        self._rpm = requests_per_minute
        self._tpm = tokens_per_minute
        self._cache: LRUCache[str, JudgeReply] | None = LRUCache(cache_size) if cache_size > 0 else None
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: JudgeTransport | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._request_budget: MinuteBudget | None = None
        self._token_budget: MinuteBudget | None = None
        self._in_flight: dict[str, asyncio.Future[JudgeResult]] = {}
        self._tokenizer = load_tokenizer(tokenizer) if tokenizer is not None else None
        if self._tokenizer is not None:
            self.count_tokens = self._count_tokens  # domains bound their inputs with the judge's own tokenizer

    def _count_tokens(self, text: str) -> int:
        assert self._tokenizer is not None
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    # ---- public ---------------------------------------------------------------------------
    async def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        self._bind_loop()
        results: list[JudgeResult | None] = [None] * len(requests)
        waiting: list[tuple[int, asyncio.Future[JudgeResult]]] = []
        mine: list[_Item] = []
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
                mine.append((key, request, future))
            else:
                self.stats.shared_in_flight += 1
            waiting.append((i, future))
        chunks = iter(self._chunks(mine))

        async def worker() -> None:  # a few workers, not one task per request: big batches stay cheap
            for chunk in chunks:
                await self._run_chunk(chunk)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.max_concurrency, len(mine)))))
        finally:
            for key, _, future in mine:
                self._in_flight.pop(key, None)
                if not future.done():  # cancelled half-way: release anyone sharing the call
                    future.set_result(JudgeFailure("judge call was cancelled"))
        for i, future in waiting:
            results[i] = await future
        return [r for r in results if r is not None]

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    # ---- internals ------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._http is not None:
            return
        if self._loop is not None and not self._loop.is_closed() and self._in_flight:
            raise RuntimeError("an OpenAIJudge is in use on another event loop")
        self._loop = loop
        self._http = make_transport(self.transport, base_url=self.base_url, api_key=self._api_key,
                                    max_connections=self.max_concurrency)
        self._semaphore = asyncio.Semaphore(self.max_concurrency)
        self._request_budget = MinuteBudget(self._rpm) if self._rpm else None
        self._token_budget = MinuteBudget(self._tpm) if self._tpm else None

    def _chunks(self, items: list[_Item]):
        """Completion requests with equal sampling parameters go out together, ``batch_size`` at a time."""
        if self.batch_size == 1:
            for item in items:
                yield [item]
            return
        groups: dict[tuple, list[_Item]] = {}
        for item in items:
            request = item[1]
            if request.endpoint == "completions":
                groups.setdefault(request.sampling(), []).append(item)
            else:
                groups[("single", item[0])] = [item]
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                yield members[start:start + self.batch_size]

    async def _run_chunk(self, chunk: list[_Item]) -> None:
        outcomes = await self._call_with_retries([request for _, request, _ in chunk])
        if len(chunk) > 1 and isinstance(outcomes[0], JudgeFailure) and not outcomes[0].transient:
            # One prompt the server refuses (say, over its context: HTTP 400) fails the whole call:
            # ask again one prompt per call, so only that prompt fails.
            outcomes = [(await self._call_with_retries([request]))[0] for _, request, _ in chunk]
        for (key, _, future), outcome in zip(chunk, outcomes):
            if isinstance(outcome, JudgeReply):
                if self._cache is not None:
                    self._cache.put(key, outcome)
            else:
                self.stats.failures += 1
            if not future.done():
                future.set_result(outcome)

    async def _call_with_retries(self, requests: list[JudgeRequest]) -> list[JudgeResult]:
        """Attempts until a reply, a permanent error, ``max_retries`` retries or the total budget.

        The budget (``judge_total_s``) runs from the first attempt, so time queued behind other
        requests of a big batch does not count; each call's timeout is cut to what is left of it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.judge_total_s
        attempt = 0
        while True:
            retry_after = None
            try:
                return list(await self._call_limited(requests, deadline))
            except HTTPStatusFailure as exc:
                transient, retry_after = exc.status in TRANSIENT_STATUSES, exc.retry_after_s
                error = f"judge returned HTTP {exc.status}: {_short(exc.message)}"
            except (Unreachable, asyncio.TimeoutError) as exc:
                transient, error = True, f"judge unreachable or no answer in time: {_short(str(exc)) or 'timeout'}"
            except (MalformedResponse, ValueError, TypeError, KeyError, AttributeError) as exc:
                transient, error = True, f"judge answered a malformed response: {_short(repr(exc))}"
            attempt += 1
            delay = backoff_delay(attempt - 1, base_s=self.timeouts.judge_backoff_s,
                                  cap_s=self.timeouts.judge_backoff_max_s, rng=self._rng)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.timeouts.judge_backoff_max_s))
            out_of_time = transient and attempt <= self.max_retries and loop.time() + delay >= deadline
            if out_of_time:
                error = (f"judge gave no answer within the total budget of {self.timeouts.judge_total_s}s "
                         f"(last error: {error})")
            if not transient or attempt > self.max_retries or out_of_time:
                log.warning("judge %s: giving up after %d attempt(s): %s", self.model, attempt, error)
                return [JudgeFailure(error, attempts=attempt, transient=transient)] * len(requests)
            self.stats.retries += 1
            await asyncio.sleep(delay)

    async def _call_limited(self, requests: list[JudgeRequest], deadline: float) -> list[JudgeReply]:
        assert self._semaphore is not None
        estimate = sum(r.approx_tokens() for r in requests)
        if self._request_budget is not None:
            await self._request_budget.acquire(1)
        if self._token_budget is not None:
            await self._token_budget.acquire(estimate)
        async with self._semaphore:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise asyncio.TimeoutError
            self.stats.calls += 1
            replies, used = await self._call(requests, min(self.timeouts.judge_request_s, left))
        if self._token_budget is not None and used is not None:
            self._token_budget.refund(estimate - used)
        return replies

    async def _call(self, requests: list[JudgeRequest], timeout_s: float) -> tuple[list[JudgeReply], int | None]:
        """One HTTP call with a plain JSON body; the reply is validated here (the SDK's typed
        ``create`` helpers would cost about 1.5x the CPU per call)."""
        assert self._http is not None
        first = requests[0]
        body: dict[str, Any] = {"model": self.model, "max_tokens": first.max_tokens,
                                "temperature": first.temperature, "top_p": first.top_p}
        if first.stop:
            body["stop"] = list(first.stop)
        if first.seed is not None:
            body["seed"] = first.seed
        if first.top_k is not None:
            body["top_k"] = first.top_k  # vLLM and SGLang accept it; hosted APIs may not
        body.update(self.extra_body)
        if first.endpoint == "completions":
            body["prompt"] = [r.prompt for r in requests] if len(requests) > 1 else first.prompt
            data = await self._http.post("/completions", body, timeout_s)
            choices = sorted(_choices(data, len(requests)), key=lambda c: c.get("index", 0))
            texts = [(c.get("text"), c.get("finish_reason")) for c in choices]
        else:
            body["messages"] = [{"role": role, "content": content} for role, content in first.messages]
            data = await self._http.post("/chat/completions", body, timeout_s)
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
        return [JudgeReply(str(text), finish if isinstance(finish, str) else None,
                           prompt_tokens if single else None, completion_tokens if single else None)
                for text, finish in texts], used


def _choices(data: Any, expected: int) -> list[dict]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != expected or not all(isinstance(c, dict) for c in choices):
        raise MalformedResponse(f"expected {expected} choice(s) in the response, got {_short(repr(choices), 80)}")
    return choices


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
