"""HTTP transports for ``OpenAIJudge``: POST a JSON body to an OpenAI-compatible endpoint, get JSON back.

Two implementations raise the same three errors, so retry decisions do not depend on the transport:

- ``AiohttpTransport`` (the default): the OpenAI HTTP protocol spoken directly over one aiohttp
  session (bearer auth, JSON in and out). About 0.5 ms of client CPU per call, judge layers included.
- ``OpenAISDKTransport``: the same call through the ``openai`` package's ``AsyncOpenAI.post`` (its
  aiohttp or httpx transport). About 1.6 ms per call (header models, option copies, URL parsing),
  which caps a one-core client near 600 calls/s; see docs/judges.md.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import urllib.parse
import urllib.request
from typing import Any, Protocol

TRANSPORTS = ("aiohttp", "openai", "openai-httpx")


class HTTPStatusFailure(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class Unreachable(Exception):
    """No answer: connection refused or reset, DNS failure, or the per-call timeout."""


class MalformedResponse(Exception):
    """The server answered 200 with a body that is not a usable completion."""


class JudgeTransport(Protocol):
    async def post(self, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        """POST ``body`` to ``base_url + path``; the decoded JSON reply, or one of the errors above."""

    async def aclose(self) -> None: ...


def api_key_or_default(api_key: str | None) -> str:
    return api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"


def check_installed(name: str) -> None:
    """Fail at configuration time, not at the first request, when a transport's package is missing."""
    if name not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {name!r}")
    needed = "aiohttp" if name == "aiohttp" else "openai"
    if importlib.util.find_spec(needed) is None:
        raise ImportError(f"judge transport {name!r} needs the {needed!r} package: pip install 'mdreward[judge]'")


def make_transport(name: str, *, base_url: str, api_key: str | None, max_connections: int) -> JudgeTransport:
    if name == "aiohttp":
        return AiohttpTransport(base_url, api_key, max_connections)
    if name in ("openai", "openai-httpx"):
        return OpenAISDKTransport(base_url, api_key, use_aiohttp=name == "openai")
    raise ValueError(f"transport must be one of {TRANSPORTS}, got {name!r}")


class AiohttpTransport:
    """One aiohttp session with ``max_connections`` keep-alive connections. Build it inside the event loop.

    Like the openai SDK, it honours ``HTTP(S)_PROXY`` and ``NO_PROXY``, read once for the base URL.
    """

    def __init__(self, base_url: str, api_key: str | None, max_connections: int) -> None:
        import aiohttp  # the `judge` extra

        self._aiohttp = aiohttp
        self._base = base_url.rstrip("/")
        self._proxy = env_proxy(self._base)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections),
            headers={"Authorization": f"Bearer {api_key_or_default(api_key)}",
                     "Content-Type": "application/json", "Accept": "application/json",
                     "User-Agent": "mdreward-judge"})

    async def post(self, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        aiohttp = self._aiohttp
        try:
            async with self._session.post(self._base + path, data=json.dumps(body, ensure_ascii=False).encode(),
                                          timeout=aiohttp.ClientTimeout(total=timeout_s), proxy=self._proxy) as response:
                payload = await response.read()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        if status >= 400:
            raise HTTPStatusFailure(status, _error_message(payload), _retry_after(headers.get("Retry-After")))
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise MalformedResponse(f"the body is not JSON: {payload[:120]!r}") from None

    async def aclose(self) -> None:
        await self._session.close()


class OpenAISDKTransport:
    """``openai.AsyncOpenAI.post`` with the SDK's own retries off (ours apply)."""

    def __init__(self, base_url: str, api_key: str | None, *, use_aiohttp: bool) -> None:
        import openai  # the `judge` extra

        self._openai = openai
        extra: dict[str, Any] = {}
        if use_aiohttp:
            try:
                extra["http_client"] = openai.DefaultAioHttpClient()
            except (AttributeError, RuntimeError, ImportError):
                raise RuntimeError("transport 'openai' needs openai>=1.80 with aiohttp installed "
                                   "(pip install 'openai[aiohttp]'); 'openai-httpx' uses the SDK's httpx") from None
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key_or_default(api_key), max_retries=0,
                                          **extra)

    async def post(self, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        openai = self._openai
        try:
            return await self._client.post(path, body=body, cast_to=object, options={"timeout": timeout_s})
        except openai.APIStatusError as exc:
            raise HTTPStatusFailure(exc.status_code, exc.message,
                                    _retry_after(exc.response.headers.get("retry-after"))) from None
        except openai.APIResponseValidationError as exc:
            raise MalformedResponse(str(exc)) from None
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # a 200 whose body is not JSON
            raise MalformedResponse(f"the body is not JSON: {exc}") from None

    async def aclose(self) -> None:
        await self._client.close()


def env_proxy(url: str) -> str | None:
    """The proxy that ``HTTP_PROXY``/``HTTPS_PROXY`` name for ``url``, unless ``NO_PROXY`` exempts its host."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def _error_message(payload: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        data = json.loads(payload)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("message")
        if isinstance(message, str):
            return message
    except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
        pass
    return payload[:300].decode("utf-8", "replace")


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header given in seconds (the HTTP-date form is ignored)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None
