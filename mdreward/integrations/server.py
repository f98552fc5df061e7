"""The HTTP reward service behind ``mdreward serve`` (Starlette on uvicorn).

Endpoints:
- ``POST /score``: ``{"records": [...]}`` (JSONL-contract records) → ``{"results": [...]}``, same order.
- ``POST /openrlhf`` (alias ``/get_reward``): OpenRLHF's ``--remote_rm_url`` protocol,
  ``{"query", "prompts", "labels"}`` → ``{"rewards", "scores", "extra_logs", ...}``.
- ``GET /healthz`` (process alive), ``GET /readyz`` (domains built; 503 while starting or draining),
  ``GET /metrics`` (Prometheus text format).

Back-pressure: records admitted but not yet answered are bounded (``max_pending_records``); a
request that would exceed the bound gets 429 with ``Retry-After``. Bodies over ``max_body_bytes``
get 413. With a token set, every endpoint but health and readiness needs ``Authorization: Bearer``.
On SIGTERM/SIGINT the server stops accepting, finishes in-flight requests (``Timeouts.server_drain_s``),
then closes the scorer.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import socket
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..records import RecordError, json_line, sample_from_record, scored_record
from ..registry import UnknownName
from ..scoring import Scorer, ScoringConfig
from ..types import Sample, Score, Status

log = logging.getLogger(__name__)

TOKEN_ENV = "MDREWARD_SERVE_TOKEN"


@dataclass(frozen=True)
class ServerLimits:
    """Request-size limits and the back-pressure bound."""

    max_body_bytes: int = 32 * 2**20
    max_records_per_request: int = 10_000
    max_pending_records: int = 50_000

    def __post_init__(self) -> None:
        if self.max_records_per_request > self.max_pending_records:
            raise ValueError("max_records_per_request must not exceed max_pending_records")


@dataclass(frozen=True)
class OpenRLHFOptions:
    """How ``/openrlhf`` reads labels and answers records it could not score.

    ``default_domain``: the domain of a label that is a plain string (the reference) or that names
    no domain. ``unscored_reward``: the number sent for an unscored record (OpenRLHF needs a number);
    ``extra_logs.mdreward_scored`` is 0 for it, so it shows in OpenRLHF's logs.
    """

    default_domain: str | None = None
    unscored_reward: float = 0.0


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Strict JSON in valid UTF-8 (``records.json_line``): NaN and infinities become ``null``, lone
    surrogates U+FFFD, odd component values their text."""
    return Response(json_line(body), status_code=status, media_type="application/json", headers=dict(headers or {}))


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """The one shape of every error reply: ``{"error": <message>, "status": <HTTP status>}``."""
    return json_response({"error": message, "status": status}, status, headers)


# ---- metrics ------------------------------------------------------------------------------------
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, math.inf)


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in labels.items())
    return "{" + inner + "}"


@dataclass
class Metrics:
    """Counters, a latency histogram and gauges, rendered in the Prometheus text format.

    Updated only from the server's event loop, so no locking is needed.
    """

    requests: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    records: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    latency_counts: dict[str, list[int]] = field(default_factory=dict)
    latency_sum: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    pending_records: int = 0
    inflight_requests: int = 0

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        counts = self.latency_counts.setdefault(endpoint, [0] * len(LATENCY_BUCKETS))
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        self.latency_sum[endpoint] += seconds

    def observe_record(self, domain: str, status: Status) -> None:
        self.records[(domain, status.value)] += 1

    def render(self) -> str:
        lines = ["# HELP mdreward_http_requests_total HTTP requests by endpoint and status code.",
                 "# TYPE mdreward_http_requests_total counter"]
        lines += [f"mdreward_http_requests_total{_labels(endpoint=e, code=str(c))} {n}"
                  for (e, c), n in sorted(self.requests.items())]
        lines += ["# HELP mdreward_records_total Records answered, by domain and status.",
                  "# TYPE mdreward_records_total counter"]
        lines += [f"mdreward_records_total{_labels(domain=d, status=s)} {n}" for (d, s), n in sorted(self.records.items())]
        lines += ["# HELP mdreward_request_duration_seconds Request latency by endpoint.",
                  "# TYPE mdreward_request_duration_seconds histogram"]
        for endpoint, counts in sorted(self.latency_counts.items()):
            for bound, count in zip(LATENCY_BUCKETS, counts):
                le = "+Inf" if math.isinf(bound) else repr(bound)
                lines.append(f"mdreward_request_duration_seconds_bucket{_labels(endpoint=endpoint, le=le)} {count}")
            lines.append(f"mdreward_request_duration_seconds_sum{_labels(endpoint=endpoint)} {self.latency_sum[endpoint]}")
            lines.append(f"mdreward_request_duration_seconds_count{_labels(endpoint=endpoint)} {counts[-1]}")
        lines += ["# HELP mdreward_pending_records Records admitted and not yet answered.",
                  "# TYPE mdreward_pending_records gauge", f"mdreward_pending_records {self.pending_records}",
                  "# HELP mdreward_inflight_requests Requests being handled.",
                  "# TYPE mdreward_inflight_requests gauge", f"mdreward_inflight_requests {self.inflight_requests}"]
        return "\n".join(lines) + "\n"


# ---- the service ----------------------------------------------------------------------------------
class RewardService:
    """What the endpoints do, apart from HTTP: admission, scoring, metrics, readiness."""

    def __init__(self, scorer: Scorer, limits: ServerLimits = ServerLimits(),
                 openrlhf: OpenRLHFOptions = OpenRLHFOptions(), token: str | None = None) -> None:
        self.scorer = scorer
        self.limits = limits
        self.openrlhf = openrlhf
        self.token = token or None
        self.metrics = Metrics()
        self.ready = False
        self.draining = False
        self.unusable: dict[str, str] = {}  # domain → why its example could not be scored at start-up
        self._unscored_since_log = 0
        self._last_unscored_log = -math.inf
        if openrlhf.default_domain is not None:  # a typo must stop the start, not unscore every plain label
            scorer.registry.resolve(openrlhf.default_domain)

    # admission: the bounded queue of records
    def admit(self, count: int) -> None:
        if self.draining:
            raise HTTPError(503, "server is shutting down", {"Retry-After": "5"})
        pending = self.metrics.pending_records
        if pending and pending + count > self.limits.max_pending_records:
            raise HTTPError(429, f"{pending} records are pending (limit {self.limits.max_pending_records}); retry later",
                            {"Retry-After": "1"})
        self.metrics.pending_records += count

    def release(self, count: int) -> None:
        self.metrics.pending_records -= count

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    def domain_label(self, sample: Sample | None) -> str:
        """A bounded label set: registered domain names, else ``unknown``."""
        if sample is None:
            return "invalid"
        try:
            return self.scorer.registry.resolve(sample.domain)
        except UnknownName:
            return "unknown"

    async def score_samples(self, prepared: Sequence[Sample | Score]) -> list[Score]:
        """Score the Samples; pre-made (unscored) Scores pass through in place."""
        samples = [p for p in prepared if isinstance(p, Sample)]
        scores = iter(await self.scorer.ascore_batch(samples) if samples else [])
        results = [next(scores) if isinstance(p, Sample) else p for p in prepared]
        for item, score in zip(prepared, results):
            self.metrics.observe_record(self.domain_label(item if isinstance(item, Sample) else None), score.status)
        return results

    async def score_records(self, records: Sequence[Any]) -> list[dict[str, Any]]:
        prepared: list[Sample | Score] = []
        for record in records:
            try:
                prepared.append(sample_from_record(record))
            except RecordError as exc:
                prepared.append(Score.unscored(str(exc)))
        scores = [_named(score, i, record) for i, (record, score) in enumerate(zip(records, await self.score_samples(prepared)))]
        self.log_unscored("/score", [s.error for s in scores if not s.scored])
        cap = self.scorer.config.format_rules.max_response_chars
        return [_without_oversized_response(scored_record(record, score), cap) for record, score in zip(records, scores)]

    def log_unscored(self, endpoint: str, errors: Sequence[str | None]) -> None:
        """Log why records could not be scored: at most one line per ``UNSCORED_LOG_INTERVAL_S``, with counts."""
        if not errors:
            return
        self._unscored_since_log += len(errors)
        now = time.monotonic()
        if now - self._last_unscored_log < UNSCORED_LOG_INTERVAL_S:
            return
        log.warning("%s: %d records could not be scored since the last report; latest: %s",
                    endpoint, self._unscored_since_log, errors[0])
        self._unscored_since_log, self._last_unscored_log = 0, now

    async def score_openrlhf(self, body: Mapping[str, Any]) -> dict[str, Any]:
        queries = body.get("query")
        if not isinstance(queries, list):
            raise HTTPError(400, "body must hold 'query': a list of strings (prompt + response)")
        n = len(queries)
        prompts = _optional_list(body, "prompts", n)
        labels = _optional_list(body, "labels", n)
        prepared = [self._openrlhf_sample(i, queries[i], prompts[i], labels[i]) for i in range(n)]
        scores = await self.score_samples(prepared)
        self.log_unscored("/openrlhf", [s.error for s in scores if not s.scored])
        placeholder = self.openrlhf.unscored_reward
        rewards = [s.reward if s.reward is not None else placeholder for s in scores]
        return {
            "rewards": rewards,
            "scores": rewards,
            "extra_logs": {
                "mdreward_scored": [1.0 if s.scored else 0.0 for s in scores],
                "mdreward_format_ok": [0.0 if s.status is Status.FORMAT_ERROR or not s.scored else 1.0 for s in scores],
                "mdreward_correct": [1.0 if s.components.get("correct") is True else 0.0 for s in scores],
            },
            "status": [s.status.value for s in scores],
            "errors": [s.error for s in scores],
        }

    def _openrlhf_sample(self, i: int, query: Any, prompt: Any, label: Any) -> Sample | Score:
        where = f"query[{i}]"
        if not isinstance(query, str):
            return Score.unscored(f"{where}: must be a string, got {type(query).__name__}")
        if prompt is None:
            response: str | None = query
        elif not isinstance(prompt, str):
            return Score.unscored(f"{where}: prompts[{i}] must be a string, got {type(prompt).__name__}")
        else:
            response = response_after_prompt(query, prompt)
        if response is None:
            return Score.unscored(f"{where}: starts neither with prompts[{i}] nor with a tail of it (at least "
                                  f"{MIN_PROMPT_TAIL_CHARS} characters, what OpenRLHF keeps of a truncated prompt); "
                                  "cannot separate the response")
        try:
            fields = label_fields(label, self.openrlhf.default_domain)
        except ValueError as exc:
            return Score.unscored(f"{where}: labels[{i}]: {exc}")
        record = {**fields, "response": response, "prompt": prompt}
        try:
            return sample_from_record(record)
        except RecordError as exc:
            return Score.unscored(f"{where}: labels[{i}]: {exc}")


UNSCORED_LOG_INTERVAL_S = 10.0  # how often the server logs why records could not be scored (a log rate, no budget)


def _named(score: Score, index: int, record: Any) -> Score:
    """Every record error starts the same way: ``records[<position>]: `` (then the record's own words,
    which name its ``id`` when it has one)."""
    if score.scored or score.error is None:
        return score
    message = score.error.removeprefix("record: ")
    return Score.unscored(f"records[{index}]: {message}", **score.components)


def _without_oversized_response(result: dict[str, Any], cap: int) -> dict[str, Any]:
    """A response over the size cap is not echoed back (a 20 MB echo is what the cap exists to prevent);
    ``response_chars`` says how long it was."""
    response = result.get("response")
    if isinstance(response, str) and len(response) > cap:
        result["response"] = None
        result["response_chars"] = len(response)
    return result


#: The shortest prompt tail accepted as the start of a query whose prompt OpenRLHF truncated.
MIN_PROMPT_TAIL_CHARS = 32
#: Leading characters of a query that may be the debris of a token cut in two by that truncation.
MAX_CUT_TOKEN_CHARS = 4


def response_after_prompt(query: str, prompt: str) -> str | None:
    """The response part of an OpenRLHF query: ``query`` minus its prompt.

    OpenRLHF's query is ``decode(prompt_tokens + response_tokens)``; a prompt longer than
    ``max_len - max_new_tokens`` loses its *head* (``prompt_tokens[-max_prompt_length:]``), so the
    query then starts with a tail of ``prompts[i]``, possibly after a few replacement characters
    from a multi-byte character whose token was cut. The longest tail of the prompt (at least
    :data:`MIN_PROMPT_TAIL_CHARS`, or the whole prompt) that starts the query marks the response;
    None when there is none.
    """
    if query.startswith(prompt):
        return query[len(prompt):]
    for skip in range(min(MAX_CUT_TOKEN_CHARS, len(query)) + 1):
        overlap = _longest_prefix_that_is_suffix(query[skip:skip + len(prompt)], prompt)
        if overlap >= min(MIN_PROMPT_TAIL_CHARS, len(prompt)):
            return query[skip + overlap:]
        if skip < len(query) and query[skip] != "\ufffd":
            break  # only replacement characters may precede the tail
    return None


def _longest_prefix_that_is_suffix(head: str, text: str) -> int:
    """Length of the longest prefix of ``head`` that is a suffix of ``text`` (Knuth–Morris–Pratt, linear)."""
    if not head or not text:
        return 0
    failure = [0] * len(head)
    k = 0
    for i in range(1, len(head)):
        while k and head[i] != head[k]:
            k = failure[k - 1]
        if head[i] == head[k]:
            k += 1
        failure[i] = k
    k = 0
    for ch in text[max(0, len(text) - len(head)):]:
        while k and (k == len(head) or ch != head[k]):
            k = failure[k - 1]
        if ch == head[k]:
            k += 1
    return k


def _optional_list(body: Mapping[str, Any], name: str, n: int) -> list[Any]:
    value = body.get(name)
    if value is None:
        return [None] * n
    if not isinstance(value, list) or len(value) != n:
        raise HTTPError(400, f"'{name}' must be a list as long as 'query' ({n})")
    return value


def label_fields(label: Any, default_domain: str | None) -> dict[str, Any]:
    """The record fields an OpenRLHF label carries.

    A label is an object (or its JSON text) with ``domain`` and the fields of the JSONL contract
    (``reference``, ``tests``, ``id``, ``metadata``), or a plain string: the reference of
    ``default_domain``.
    """
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as exc:
            raise ValueError(f"looks like JSON but is not valid ({exc.msg})") from None
    if isinstance(label, Mapping):
        fields = {k: label[k] for k in ("domain", "reference", "tests", "id", "metadata") if k in label}
        fields.setdefault("domain", default_domain)
        if fields["domain"] is None:
            raise ValueError("names no 'domain' and the server has no default domain (--default-domain)")
        return fields
    if label is None and default_domain is not None:
        return {"domain": default_domain}
    if isinstance(label, (str, int, float)) and not isinstance(label, bool):
        if default_domain is None:
            raise ValueError("a plain label is a reference, which needs --default-domain; or send "
                             '{"domain": ..., "reference": ...}')
        return {"domain": default_domain, "reference": str(label)}
    raise ValueError(f"must be an object or a string, got {type(label).__name__}")


# ---- HTTP ------------------------------------------------------------------------------------------
async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"body is not valid JSON: {exc}") from None


Handler = Callable[[Request], Awaitable[Response]]


def create_app(service: RewardService | None = None, *, config: ScoringConfig | None = None,
               limits: ServerLimits = ServerLimits(), openrlhf: OpenRLHFOptions = OpenRLHFOptions(),
               token: str | None = None) -> Starlette:
    """The ASGI app. With ``service`` given, the caller owns its scorer; otherwise the app builds one
    from ``config`` at start-up and closes it at shutdown."""
    owned = service is None
    if service is None:
        scorer = Scorer(config or ScoringConfig())
        try:
            service = RewardService(scorer, limits, openrlhf, token)
        except UnknownName:  # an unknown default domain: nothing starts
            scorer.close()
            raise
    svc = service

    def endpoint(name: str, handler: Handler, *, auth: bool = True) -> Handler:
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            svc.metrics.inflight_requests += 1
            try:
                if auth and not svc.authorized(request):
                    raise HTTPError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
                response = await handler(request)
            except HTTPError as exc:
                response = error_response(exc.status, exc.message, exc.headers)
            except Exception as exc:  # a bug must still answer, and be counted
                log.exception("%s failed", name)
                response = error_response(500, f"internal error: {exc!r}")
            finally:
                svc.metrics.inflight_requests -= 1
            svc.metrics.observe_request(name, response.status_code, time.perf_counter() - started)
            return response
        return run

    async def score(request: Request) -> Response:
        body = await read_json(request, svc.limits.max_body_bytes)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise HTTPError(400, "body must be a JSON object with a 'records' list")
        return await admitted(len(records), lambda: svc.score_records(records), lambda r: {"results": r})

    async def openrlhf_score(request: Request) -> Response:
        body = await read_json(request, svc.limits.max_body_bytes)
        if not isinstance(body, dict):
            raise HTTPError(400, "body must be a JSON object with 'query', 'prompts' and 'labels'")
        queries = body.get("query")
        count = len(queries) if isinstance(queries, list) else 0
        return await admitted(count, lambda: svc.score_openrlhf(body), lambda r: r)

    async def admitted(count: int, work: Callable[[], Awaitable[Any]], wrap: Callable[[Any], Any]) -> Response:
        if count > svc.limits.max_records_per_request:
            raise HTTPError(413, f"{count} records exceed the limit of {svc.limits.max_records_per_request} per request")
        svc.admit(count)
        try:
            return json_response(wrap(await work()))
        finally:
            svc.release(count)

    async def healthz(_: Request) -> Response:
        return json_response({"status": "alive"})

    async def readyz(_: Request) -> Response:
        if svc.draining:
            return json_response({"status": "draining"}, 503)
        if not svc.ready:
            return json_response({"status": "starting"}, 503)
        usable = [name for name in svc.scorer.registry.names() if name not in svc.unusable]
        return json_response({"status": "ready", "domains": usable, "unusable": svc.unusable})

    async def metrics(_: Request) -> Response:
        return PlainTextResponse(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        warming = asyncio.create_task(warm_up(svc))  # health answers at once; readiness waits for it
        try:
            yield
        finally:
            svc.draining = True
            warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warming
            if owned:
                await svc.scorer.aclose()

    routes = [
        Route("/score", endpoint("score", score), methods=["POST"]),
        Route("/openrlhf", endpoint("openrlhf", openrlhf_score), methods=["POST"]),
        Route("/get_reward", endpoint("openrlhf", openrlhf_score), methods=["POST"]),
        Route("/healthz", endpoint("healthz", healthz, auth=False), methods=["GET"]),
        Route("/readyz", endpoint("readyz", readyz, auth=False), methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics), methods=["GET"]),
    ]
    async def http_exception(request: Request, exc: Exception) -> Response:
        """Starlette's own errors (404 no such path, 405 wrong method) in the same JSON shape."""
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; endpoints: {', '.join(sorted({r.path for r in routes}))}"
        elif exc.status_code == 405:
            allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, exc.headers)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_exception})
    app.state.service = svc
    return app


async def warm_up(service: RewardService) -> None:
    """Build every domain (and start its workers) by scoring its registered example; then ready."""
    examples = [entry.value.example for entry in service.scorer.registry if entry.value.example is not None]
    if examples:
        scores = await service.scorer.ascore_batch(examples)
        for example, score in zip(examples, scores):
            if not score.scored:
                service.unusable[example.domain] = score.error or "unscored"
                log.warning("domain %s is not usable here: %s", example.domain, score.error)
    service.ready = True


# ---- running it -----------------------------------------------------------------------------------
def build_server(app: Starlette, drain_s: float, **config: Any) -> Any:
    """A ``uvicorn.Server`` for ``app`` (``config``: uvicorn.Config options); start it with ``server.run()``."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """Marks the service draining (readiness 503, new work 503) before uvicorn's graceful shutdown."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.service.draining = True
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after shutting down; a drained shutdown is a clean exit (status 0)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.state.service.draining = True
            await super().shutdown(sockets)

    return DrainingServer(uvicorn.Config(app, timeout_graceful_shutdown=max(1, math.ceil(drain_s)),
                                         lifespan="on", **config))


def serve(app: Starlette, *, host: str = "127.0.0.1", port: int = 8000, drain_s: float = 60.0,
          log_level: str = "info", sock: socket.socket | None = None) -> None:
    """Run ``app`` until SIGTERM/SIGINT, then drain in-flight requests (at most ``drain_s``)."""
    server = build_server(app, drain_s, host=host, port=port, log_level=log_level)
    server.run(sockets=[sock] if sock is not None else None)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket for ``serve``. Created with ``IPPROTO_TCP`` on purpose: asyncio sets
    TCP_NODELAY on accepted connections only then; without it each small response waits ~40 ms
    (Nagle's algorithm against the client's delayed ACK)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mdreward serve`` arguments (mdreward/cli.py builds the sub-command with this)."""
    parser.description = "Serve rewards over HTTP: POST /score, POST /openrlhf, /healthz, /readyz, /metrics."
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--config", help="TOML config: [format], [timeouts], [judge], [domains.<name>]")
    parser.add_argument("--think-in-prompt", action="store_true",
                        help="the chat template opened <think> in the prompt: responses carry only '...</think>'")
    parser.add_argument("--judge-url", help="OpenAI-compatible endpoint for every model-judged domain")
    parser.add_argument("--judge-model", help="model name served at --judge-url")
    parser.add_argument("--token-file", help=f"file holding the bearer token (or set ${TOKEN_ENV}); none: no auth")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (default 32 MiB)")
    parser.add_argument("--max-records", type=int, default=10_000, help="most records per request (default 10000)")
    parser.add_argument("--max-pending", type=int, default=50_000,
                        help="records admitted and not yet answered before 429 (default 50000)")
    parser.add_argument("--default-domain", help="/openrlhf: domain of a label that is a plain reference string")
    parser.add_argument("--unscored-reward", type=float, default=0.0,
                        help="/openrlhf: reward sent for a record that could not be scored (default 0.0; "
                             "extra_logs.mdreward_scored marks it)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(run=run_serve)


def _token(path: str | None) -> str | None:
    if path:
        with open(path) as f:
            return f.read().strip() or None
    return os.environ.get(TOKEN_ENV, "").strip() or None


def run_serve(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_config  # the same loader and judge flags as `mdreward score`
    try:
        config = load_config(args.config, think_in_prompt=True if args.think_in_prompt else None,
                             judge_url=args.judge_url, judge_model=args.judge_model)
        limits = ServerLimits(int(args.max_body_mb * 2**20), args.max_records, args.max_pending)
        token = _token(args.token_file)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a bearer token: anyone who can reach it can use it", args.host)
    try:
        app = create_app(config=config, limits=limits, token=token,
                         openrlhf=OpenRLHFOptions(args.default_domain, args.unscored_reward))
    except UnknownName as exc:
        print(f"error: --default-domain: {exc}", file=sys.stderr)
        return 2
    sock = bind_socket(args.host, args.port)
    print(f"mdreward serve: listening on http://{args.host}:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
    serve(app, drain_s=config.timeouts.server_drain_s, log_level=args.log_level, sock=sock)
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    """``python -m mdreward.integrations.server ...``: the same as ``mdreward serve ...``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="mdreward serve")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(serve_main())
