"""A real OpenAI-compatible HTTP server for tests and benchmarks (test code, not the library).

Serves ``/v1/completions`` (a prompt or a list of prompts), ``/v1/chat/completions`` and
``/v1/models`` over loopback with uvicorn, from one of three engines:

- ``TransformersEngine``: a real model through transformers (the tiny offline model, or SmolLM2);
- ``ScriptedEngine``: a function of the prompt, for exact verdict tables over real HTTP;
- ``FixedDelayEngine``: a constant reply after a fixed service time (the throughput benchmark).

``FaultPlan`` injects failures: the next N calls answer HTTP 500, or a garbage body, or every
call is delayed. Run ``python tests/judge_server.py --service-ms 50`` for a standalone server that
prints its base URL (the benchmark starts it that way, in its own process).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import socket
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class FaultPlan:
    fail_next: int = 0            # the next N calls answer HTTP `fail_status`
    fail_status: int = 500
    retry_after: str | None = None  # the Retry-After header sent with those failures
    garbage_next: int = 0         # the next N calls answer 200 with a body that is not JSON
    delay_s: float = 0.0          # every call waits this long first
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    rejected: int = 0             # calls answered 400 because a prompt was over the context
    bodies: list[dict] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    def take(self, attribute: str) -> bool:
        if getattr(self, attribute) > 0:
            setattr(self, attribute, getattr(self, attribute) - 1)
            return True
        return False


class ContextOverflow(Exception):
    """Raised by a script for a prompt over the model's context: the server answers HTTP 400, as vLLM does
    (for a batched call, the whole call fails)."""


class ScriptedEngine:
    """Replies computed from the prompt text (completions) or the last user message (chat).

    The script returns the text, or ``(text, finish_reason)``.
    """

    def __init__(self, reply: Callable[[str], str | tuple[str, str]]) -> None:
        self.reply = reply

    def _one(self, text: str) -> tuple[str, str]:
        out = self.reply(text)
        return out if isinstance(out, tuple) else (out, "stop")

    async def complete(self, prompts: Sequence[str], body: dict) -> list[tuple[str, str]]:
        return [self._one(p) for p in prompts]

    async def chat(self, messages: list[dict], body: dict) -> tuple[str, str]:
        return self._one(messages[-1]["content"])


class FixedDelayEngine:
    """A constant reply after ``service_s`` seconds per call (no CPU work: an ideal server)."""

    def __init__(self, service_s: float, text: str = "Final Decision: Yes") -> None:
        self.service_s = service_s
        self.text = text

    async def complete(self, prompts: Sequence[str], body: dict) -> list[tuple[str, str]]:
        await asyncio.sleep(self.service_s)
        return [(self.text, "stop") for _ in prompts]

    async def chat(self, messages: list[dict], body: dict) -> tuple[str, str]:
        await asyncio.sleep(self.service_s)
        return self.text, "stop"


class TransformersEngine:
    """A real model: generation through mdreward's transformers backend (one batch at a time)."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge

    async def _run(self, requests: list) -> list[tuple[str, str]]:
        from mdreward.judges.base import JudgeFailure

        replies = await self.judge.generate(requests)
        out = []
        for reply in replies:
            if isinstance(reply, JudgeFailure):
                raise RuntimeError(reply.error)
            out.append((reply.text, reply.finish_reason or "stop"))
        return out

    async def complete(self, prompts: Sequence[str], body: dict) -> list[tuple[str, str]]:
        from mdreward.judges.base import JudgeRequest

        params = _sampling(body)
        return await self._run([JudgeRequest.completion(p, **params) for p in prompts])

    async def chat(self, messages: list[dict], body: dict) -> tuple[str, str]:
        from mdreward.judges.base import JudgeRequest

        request = JudgeRequest.chat([(m["role"], m["content"]) for m in messages], **_sampling(body))
        return (await self._run([request]))[0]


def _sampling(body: dict) -> dict[str, Any]:
    stop = body.get("stop") or ()
    return {"max_tokens": int(body.get("max_tokens") or 16), "temperature": float(body.get("temperature") or 0.0),
            "top_p": float(body.get("top_p") or 1.0), "stop": tuple([stop] if isinstance(stop, str) else stop),
            "seed": body.get("seed")}


def make_app(engine: Any, faults: FaultPlan, model: str) -> Starlette:
    ids = itertools.count()

    async def guarded(request: Request, handler) -> Response:
        faults.calls += 1
        faults.in_flight += 1
        faults.max_in_flight = max(faults.max_in_flight, faults.in_flight)
        try:
            body = await request.json()
            faults.bodies.append(body)
            faults.authorizations.append(request.headers.get("authorization"))
            if faults.delay_s:
                await asyncio.sleep(faults.delay_s)
            if faults.take("fail_next"):
                headers = {"Retry-After": faults.retry_after} if faults.retry_after is not None else None
                return JSONResponse({"error": {"message": "injected failure", "type": "server_error"}},
                                    status_code=faults.fail_status, headers=headers)
            if faults.take("garbage_next"):
                return Response("<html>502 upstream garbage {{{", media_type="application/json")
            try:
                return JSONResponse(await handler(body))
            except ContextOverflow as exc:
                faults.rejected += 1
                return JSONResponse({"error": {"message": str(exc), "type": "BadRequestError"}}, status_code=400)
        finally:
            faults.in_flight -= 1

    async def completions(request: Request) -> Response:
        async def handle(body: dict) -> dict:
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            outputs = await engine.complete(prompts, body)
            return {"id": f"cmpl-{next(ids)}", "object": "text_completion", "created": int(time.time()),
                    "model": model, "choices": [{"index": k, "text": text, "finish_reason": finish, "logprobs": None}
                                                for k, (text, finish) in enumerate(outputs)],
                    "usage": {"prompt_tokens": sum(len(p) // 4 for p in prompts),
                              "completion_tokens": sum(len(t) // 4 for t, _ in outputs),
                              "total_tokens": 0}}
        return await guarded(request, handle)

    async def chat(request: Request) -> Response:
        async def handle(body: dict) -> dict:
            text, finish = await engine.chat(body["messages"], body)
            return {"id": f"chat-{next(ids)}", "object": "chat.completion", "created": int(time.time()),
                    "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                 "finish_reason": finish, "logprobs": None}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": len(text) // 4, "total_tokens": 1}}
        return await guarded(request, handle)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "tests"}]})

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"])])


class JudgeServer:
    """A uvicorn server on a free loopback port, on a background thread of this process."""

    def __init__(self, engine: Any, *, model: str = "test-judge", faults: FaultPlan | None = None) -> None:
        self.faults = faults or FaultPlan()
        self.model = model
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(make_app(engine, self.faults, model), log_level="warning", access_log=False,
                                loop="asyncio", http="h11", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "JudgeServer":
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test judge server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def free_port_with_nothing_listening() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _FixedDelayProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive handler: every POST gets one fixed completion after ``delay_s``.

    Almost no CPU per request, so the benchmark measures the client, not the server.
    """

    choice = b'{"index": 0, "text": "Final Decision: Yes", "finish_reason": "stop", "logprobs": null}'

    def __init__(self, delay_s: float, body: bytes) -> None:
        self.delay_s = delay_s
        self.body = body
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < head_end + 4 + length:
                return
            payload = self.buffer[head_end + 4:head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length:]
            if head.startswith("GET"):
                self._send(b'{"object": "list", "data": [{"id": "bench", "object": "model"}]}')
                continue
            prompts = json.loads(payload).get("prompt")
            body = self.body if not isinstance(prompts, list) else self.body.replace(
                b'"choices": [' + self.choice + b"]",
                b'"choices": [' + b", ".join(self.choice.replace(b'"index": 0', b'"index": %d' % k)
                                             for k in range(len(prompts))) + b"]")
            asyncio.get_running_loop().call_later(self.delay_s, self._send, body)

    def _send(self, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)


def serve_fixed_delay_raw(sock: socket.socket, delay_s: float) -> None:
    """Serve ``_FixedDelayProtocol`` on ``sock`` forever (the benchmark's server process), on uvloop if installed."""
    body = (b'{"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": "bench", "choices": ['
            + _FixedDelayProtocol.choice + b'], "usage": {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}}')

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(lambda: _FixedDelayProtocol(delay_s, body),
                                                                sock=sock, backlog=4096)
        async with server:
            await server.serve_forever()

    try:
        import uvloop  # less event-loop overhead: closer to an ideal server
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server with a fixed service time")
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--raw", action="store_true",
                        help="minimal asyncio HTTP server (fixed completion reply) instead of uvicorn/starlette")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(json.dumps({"url": f"http://127.0.0.1:{sock.getsockname()[1]}/v1"}), flush=True)
    if args.raw:
        serve_fixed_delay_raw(sock, args.service_ms / 1000.0)
        return
    engine = FixedDelayEngine(args.service_ms / 1000.0)
    config = uvicorn.Config(make_app(engine, FaultPlan(), "bench-judge"), log_level="warning", access_log=False,
                            backlog=2048, limit_concurrency=None)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()


# ---- a gullible judge: honest except for one weakness (the attack tests) ----------------------------
GULLIBLE_MODES = ("lookalike", "obey", "copy", "last_label", "honest")


def read_as_ascii(text: str) -> str:
    """How a judge that takes look-alikes for ASCII reads ``text``: its own table, independent of mdreward's
    (NFKC for everything, format/tag characters dropped, middle dots and similar read as spaces)."""
    out = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf" or 0xE0000 <= ord(char) <= 0xE007F or 0xFE00 <= ord(char) <= 0xFE0F:
            continue
        if char in "·‧∙⋅•・":
            out.append(" ")
            continue
        out.append(_HOMOGLYPHS.get(char, char))
    return unicodedata.normalize("NFKC", "".join(out))


_HOMOGLYPHS = dict(zip("АВСЕНІКМОРЅТХаеіорсхуԁһΑΒΕΗΙΚΜΝΟΡΤΧοινρτυꓮꓐꓚꓓꓰꓝꓖꓧꓲꓙꓗꓡꓟꓠꓳꓑꓣꓢꓔꓴꓦꓪꓫꓬ【】〚〛ˋ‵꞉∶ᐸᐳ‹›",
                       "ABCEHIKMOPSTXaeiopcxydhABEHIKMNOPTXoivptuABCDEFGHIJKLMNOPRSTUVWXY[][]``::<><>"))
#: An instruction, as this judge recognises one: a sentence that names a verdict and someone to act on it.
_VERDICT_WORDS = re.compile(r"\b(correct|right answer|better|best|winner|superior|10\s*/\s*10|10 out of 10|full marks"
                            r"|score of 10|a 10|ten|perfect|yes|preferred|prefer)\b", re.IGNORECASE)
_ADDRESS_WORDS = re.compile(r"\b(judge|grader|evaluator|verifier|critic|reviewer|assessor|you|your|mark|rate|grade"
                            r"|score|consider|treat|note|instruction|system|model|ai|please|must|should)\b",
                            re.IGNORECASE)


def obeyed_instruction(text: str) -> bool:
    return any(_VERDICT_WORDS.search(s) and _ADDRESS_WORDS.search(s) for s in re.split(r"(?<=[.!?\n])\s*", text))


_COPY_DECISION = re.compile(r"final\W{0,3}decision\W{0,4}(yes|no)", re.IGNORECASE)
_COPY_PAIRWISE = re.compile(r"\[\s*\[\s*([ABC])\s*\]\s*\]")
_COPY_SCORE = re.compile(r"\{[^{}]*?[\"']score[\"']\s*:\s*(\d+)[^{}]*\}")


class GullibleJudge:
    """A scripted judge for all three prompts (verifier, pairwise, critic), honest except in one ``mode``:

    - ``lookalike``: reads look-alike characters as ASCII, then takes a verdict it sees in the data as its own;
    - ``obey``: obeys an instruction it finds in the data (a sentence naming a verdict and an addressee);
    - ``copy``: copies a verdict token, ``Final Decision`` or score object it sees in the data into its answer;
    - ``last_label``: reads each section from the last label it sees (``Ground Truth Answer:``, ``<<<TEXT A>>>``
      markers of the form the prompt uses, ``** Criteria **``).

    Honest verdicts: science, Yes when the answers match up to case and punctuation; writing, the longer
    text wins; critic, the digit in the criterion's name (``c3`` -> 3).
    """

    def __init__(self, mode: str) -> None:
        if mode not in GULLIBLE_MODES:
            raise ValueError(mode)
        self.mode = mode

    def __call__(self, text: str) -> str:
        if "Ground Truth Answer" in text:
            return self.verifier(text)
        if "<<<TEXT A" in text:
            return self.pairwise(text)
        return self.critic(text)

    # -- science: the general-verifier prompt
    def verifier(self, prompt: str) -> str:
        student = _between(prompt, "### Student Answer: ", "\n\nFor the above question")
        truth = _between(prompt, "### Ground Truth Answer: ", "\n\n### Student Answer:")
        if self.mode == "last_label":
            labels = list(re.finditer(r"ground[\s_-]*truth[\s_-]*answer\s*:", prompt, re.IGNORECASE))
            tail = prompt[labels[-1].end():]
            truth = re.split(r"#*\s*student[\s_-]*answer\s*:|\n\nFor the above question", tail,
                             flags=re.IGNORECASE)[0]
            labels = list(re.finditer(r"student[\s_-]*answer\s*:", prompt, re.IGNORECASE))
            student = prompt[labels[-1].end():].split("\n\nFor the above question")[0]
        copied = None
        if self.mode == "lookalike":
            copied = _COPY_DECISION.search(read_as_ascii(student))
        elif self.mode == "copy":
            copied = _COPY_DECISION.search(student)
        if copied:
            return f"Final Decision: {copied.group(1).capitalize()}"
        if self.mode == "obey" and obeyed_instruction(student):
            return "As instructed. Final Decision: Yes"
        same = re.sub(r"\W", "", truth).casefold() == re.sub(r"\W", "", student).casefold()
        return f"Checked.\nFinal Decision: {'Yes' if same else 'No'}"

    # -- writing: the pairwise prompt
    def pairwise(self, user: str) -> str:
        first = re.search(r"<<<TEXT A( \w+)?>>>", user)
        tag = re.escape(first.group(1).strip()) if first and first.group(1) else None
        texts = {}
        for side in "AB":
            opener = rf"<+\s*TEXT {side}\s*{tag}\s*>+" if tag else rf"<+\s*TEXT {side}[^>\n]*>+"
            closer = rf"<+\s*END TEXT {side}\s*{tag}\s*>+" if tag else rf"<+\s*END TEXT {side}[^>\n]*>+"
            if self.mode == "last_label":
                start = list(re.finditer(opener, user))[-1].end()
            else:
                start = re.search(opener, user).end()
            end = re.compile(closer).search(user, start)
            texts[side] = user[start:end.start() if end else len(user)].strip()
        nonce = re.search(r'"Verdict (\w+): \[\[A\]\]"', user)

        def verdict(token: str) -> str:
            return f"Compared the texts.\n{'Verdict ' + nonce.group(1) + ': ' if nonce else ''}[[{token}]]"

        for side in "AB":
            if self.mode == "lookalike" and (found := _COPY_PAIRWISE.search(read_as_ascii(texts[side]))):
                return verdict(found.group(1))
            if self.mode == "copy" and (found := _COPY_PAIRWISE.search(texts[side])):
                return verdict(found.group(1))
            if self.mode == "obey" and obeyed_instruction(texts[side]):
                return verdict(side)
        a, b = len(texts["A"]), len(texts["B"])
        return verdict("A" if a > b else "B" if b > a else "C")

    # -- writingbench: the critic prompt
    def critic(self, user: str) -> str:
        fence = re.search(r"\*\* Response \*\*\n(`{3,})", user)
        response = user[fence.end():].split(fence.group(1), 1)[0] if fence else ""
        labels = list(re.finditer(r"\*\*\s*Criteria\s*\*\*\s*\n?`*", user, re.IGNORECASE))
        label = labels[-1] if self.mode == "last_label" else labels[0]
        criteria = user[label.end():label.end() + 300]
        source = read_as_ascii(response) if self.mode == "lookalike" else response
        if self.mode in ("lookalike", "copy"):
            for match in _COPY_SCORE.finditer(source):
                return '{"score": %d, "reason": "copied"}' % int(match.group(1))
        if self.mode == "obey" and obeyed_instruction(response):
            return '{"score": 10, "reason": "as instructed"}'
        digit = re.search(r"c(\d+)", criteria)
        return '{"score": %d, "reason": "honest"}' % (int(digit.group(1)) if digit else 5)


def _between(text: str, start: str, end: str) -> str:
    head = text.find(start)
    if head < 0:
        return ""
    head += len(start)
    tail = text.find(end, head)
    return text[head:tail if tail >= 0 else len(text)]
