"""The OpenAI-compatible judge client against a real HTTP server on loopback."""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from judge_server import FaultPlan, JudgeServer, ScriptedEngine, TransformersEngine, free_port_with_nothing_listening
from judge_support import TEST_TIMEOUTS, tiny_judge
from mdreward.judges.base import JudgeFailure, JudgeReply, JudgeRequest
from mdreward.judges.limits import MinuteBudget, backoff_delay
from mdreward.judges.http_transport import TRANSPORTS
from mdreward.judges.openai_client import OpenAIJudge
from mdreward.timeouts import Timeouts


def echo(text: str) -> str:
    return "echo:" + text[-40:]


@pytest.fixture()
def scripted():
    with JudgeServer(ScriptedEngine(echo)) as server:
        yield server


def client(server_or_url, **kwargs) -> OpenAIJudge:
    url = server_or_url if isinstance(server_or_url, str) else server_or_url.url
    options = {"timeouts": TEST_TIMEOUTS, **kwargs}
    return OpenAIJudge(base_url=url, model="test-judge", **options)


async def run(judge: OpenAIJudge, requests):
    try:
        return await judge.generate(requests)
    finally:
        await judge.aclose()


async def test_completions_and_chat_round_trip(scripted):
    judge = client(scripted)
    replies = await run(judge, [JudgeRequest.completion("prompt one"),
                                JudgeRequest.chat([("system", "s"), ("user", "question two")])])
    assert [r.text for r in replies] == ["echo:prompt one", "echo:question two"]
    assert all(isinstance(r, JudgeReply) and r.finish_reason == "stop" for r in replies)
    completion_body, chat_body = sorted(scripted.faults.bodies, key=lambda b: "messages" in b)
    assert completion_body["prompt"] == "prompt one" and completion_body["temperature"] == 0.0
    assert chat_body["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "question two"}]


async def test_a_closed_client_can_be_used_again(scripted):
    judge = client(scripted)
    await run(judge, [JudgeRequest.completion("first")])
    (reply,) = await run(judge, [JudgeRequest.completion("second")])
    assert reply.text == "echo:second"


async def test_completion_batching_keeps_each_reply_with_its_prompt(scripted):
    judge = client(scripted, batch_size=4)
    prompts = [f"p{i}" for i in range(10)]
    replies = await run(judge, [JudgeRequest.completion(p) for p in prompts])
    assert [r.text for r in replies] == [f"echo:{p}" for p in prompts]
    assert scripted.faults.calls == 3  # 4 + 4 + 2 prompts
    assert sorted(len(b["prompt"]) for b in scripted.faults.bodies) == [2, 4, 4]


async def test_cache_is_keyed_by_the_exact_request(scripted):
    judge = client(scripted)
    try:
        first = await judge.generate([JudgeRequest.completion("same"), JudgeRequest.completion("same")])
        assert scripted.faults.calls == 1  # identical requests in flight share one call
        again = await judge.generate([JudgeRequest.completion("same"),
                                      JudgeRequest.completion("same", max_tokens=7)])
    finally:
        await judge.aclose()
    assert [r.text for r in first] == ["echo:same"] * 2
    assert again[0].cached and not again[1].cached  # another max_tokens is another request
    assert scripted.faults.calls == 2


async def test_concurrency_limit_is_respected():
    with JudgeServer(ScriptedEngine(echo), faults=FaultPlan(delay_s=0.15)) as server:
        judge = client(server, max_concurrency=3)
        replies = await run(judge, [JudgeRequest.chat([("user", f"q{i}")]) for i in range(12)])
        assert all(isinstance(r, JudgeReply) for r in replies)
        assert server.faults.max_in_flight == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_500s_then_recovery_are_retried(transport):
    with JudgeServer(ScriptedEngine(echo), faults=FaultPlan(fail_next=3)) as server:
        judge = client(server, max_retries=4, transport=transport)
        replies = await run(judge, [JudgeRequest.completion("x")])
        assert replies[0].text == "echo:x"
        assert judge.stats.retries == 3 and server.faults.calls == 4


async def test_retries_are_bounded_then_failure_not_reply():
    with JudgeServer(ScriptedEngine(echo), faults=FaultPlan(fail_next=100, fail_status=503)) as server:
        judge = client(server, max_retries=2)
        (reply,) = await run(judge, [JudgeRequest.completion("x")])
        assert isinstance(reply, JudgeFailure) and reply.attempts == 3 and "503" in reply.error
        assert server.faults.calls == 3


async def test_permanent_errors_are_not_retried():
    with JudgeServer(ScriptedEngine(echo), faults=FaultPlan(fail_next=1, fail_status=404)) as server:
        judge = client(server, max_retries=4)
        (reply,) = await run(judge, [JudgeRequest.completion("x")])
        assert isinstance(reply, JudgeFailure) and not reply.transient and reply.attempts == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_garbage_body_is_retried_then_recovers(transport):
    with JudgeServer(ScriptedEngine(echo), faults=FaultPlan(garbage_next=2)) as server:
        judge = client(server, max_retries=3, transport=transport)
        (reply,) = await run(judge, [JudgeRequest.completion("x")])
        assert isinstance(reply, JudgeReply) and reply.text == "echo:x"
        assert server.faults.calls == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_server_down_gives_failures_for_every_request(transport):
    judge = client(f"http://127.0.0.1:{free_port_with_nothing_listening()}/v1", max_retries=2, transport=transport)
    replies = await run(judge, [JudgeRequest.completion(f"x{i}") for i in range(5)])
    assert len(replies) == 5
    assert all(isinstance(r, JudgeFailure) and r.attempts == 3 and "unreachable" in r.error for r in replies)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_slow_server_hits_the_request_timeout_and_the_total_budget(transport):
    timeouts = Timeouts(judge_request_s=0.2, judge_total_s=0.9, judge_backoff_s=0.01, judge_backoff_max_s=0.02)
    with JudgeServer(ScriptedEngine(echo), faults=FaultPlan(delay_s=1.5)) as server:
        judge = client(server, timeouts=timeouts, max_retries=50, transport=transport)
        started = time.perf_counter()
        (reply,) = await run(judge, [JudgeRequest.completion("x")])
        elapsed = time.perf_counter() - started
        assert isinstance(reply, JudgeFailure) and "total budget" in reply.error
        assert 0.8 < elapsed < 1.5
        assert server.faults.calls >= 3  # each attempt timed out after ~0.2 s


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_api_key_goes_out_as_a_bearer_token(scripted, transport):
    judge = client(scripted, api_key="sk-test-123", transport=transport)
    await run(judge, [JudgeRequest.completion("x")])
    assert scripted.faults.authorizations == ["Bearer sk-test-123"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_retry_after_is_honoured_on_429(transport):
    timeouts = Timeouts(judge_request_s=5, judge_total_s=20, judge_backoff_s=0.001, judge_backoff_max_s=5)
    with JudgeServer(ScriptedEngine(echo), faults=FaultPlan(fail_next=1, fail_status=429, retry_after="0.6")) as server:
        judge = client(server, timeouts=timeouts, transport=transport)
        started = time.perf_counter()
        (reply,) = await run(judge, [JudgeRequest.completion("x")])
        assert isinstance(reply, JudgeReply) and server.faults.calls == 2
        assert 0.6 <= time.perf_counter() - started < 2.0  # waited what the server asked, not the 1 ms backoff


async def test_the_proxy_named_by_the_environment_is_used_unless_no_proxy_exempts_the_host(scripted, monkeypatch):
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port_with_nothing_listening()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    (reply,) = await run(client(scripted, max_retries=0), [JudgeRequest.completion("x")])
    assert isinstance(reply, JudgeFailure) and "unreachable" in reply.error  # went to the dead proxy
    assert scripted.faults.calls == 0
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    (reply,) = await run(client(scripted, max_retries=0), [JudgeRequest.completion("x")])
    assert isinstance(reply, JudgeReply) and reply.text == "echo:x"


async def test_time_queued_behind_a_big_batch_does_not_count_against_the_total_budget():
    timeouts = Timeouts(judge_request_s=1.0, judge_total_s=0.6, judge_backoff_s=0.01, judge_backoff_max_s=0.02)
    with JudgeServer(ScriptedEngine(echo), faults=FaultPlan(delay_s=0.1)) as server:
        judge = client(server, timeouts=timeouts, max_concurrency=1)
        replies = await run(judge, [JudgeRequest.completion(f"q{i}") for i in range(10)])  # ~1 s in all
        assert [r.text for r in replies] == [f"echo:q{i}" for i in range(10)]
        assert server.faults.max_in_flight == 1


class FakeClock:
    """The clock ``MinuteBudget`` accepts, advanced by the budget's own waits instead of real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch):
    from types import SimpleNamespace

    from mdreward.judges import limits

    fake = FakeClock()
    monkeypatch.setattr(limits, "asyncio", SimpleNamespace(Lock=asyncio.Lock, sleep=fake.sleep))
    return fake


async def test_tokens_per_minute_limit_charges_the_request_estimate(scripted, clock):
    judge = client(scripted, tokens_per_minute=600, cache_size=0)  # 10 tokens a second, burst 600
    judge._bind_loop()
    judge._token_budget = MinuteBudget(600, clock=clock)
    await judge._token_budget.acquire(600)  # drain the burst
    request = JudgeRequest.completion("q", max_tokens=7)  # estimated at 1 // 3 + 8 + 7 = 15 tokens
    assert request.approx_tokens() == 15
    await run(judge, [request])
    assert clock.slept == pytest.approx(1.5)  # 15 tokens at 10 a second


async def test_minute_budget_waits_for_refill(clock):
    budget = MinuteBudget(per_minute=600, clock=clock)  # 10 units a second, burst 600
    await budget.acquire(600)
    assert clock.slept == 0
    await budget.acquire(3)  # needs 0.3 s of refill
    assert clock.slept == pytest.approx(0.3)


async def test_requests_per_minute_limit_delays_the_burst_beyond_the_bucket(scripted, clock):
    judge = client(scripted, requests_per_minute=300, cache_size=0)  # burst 300, then 5 a second
    judge._bind_loop()
    judge._request_budget = MinuteBudget(300, clock=clock)
    await judge._request_budget.acquire(300)  # drain the burst
    await run(judge, [JudgeRequest.completion(f"r{i}") for i in range(3)])
    assert clock.slept == pytest.approx(0.6)  # 3 requests at 5 a second


def test_backoff_has_full_jitter_and_a_cap():
    rng = random.Random(1)
    delays = [backoff_delay(5, base_s=0.5, cap_s=4.0, rng=rng) for _ in range(200)]
    assert 0 <= min(delays) < 0.5 and 3.0 < max(delays) <= 4.0
    assert all(0 <= backoff_delay(0, base_s=0.5, cap_s=4.0, rng=rng) <= 0.5 for _ in range(50))


async def test_real_tiny_model_over_http_matches_in_process_generation():
    model = tiny_judge()
    with JudgeServer(TransformersEngine(model), model="tiny") as server:
        judge = OpenAIJudge(base_url=server.url, model="tiny", timeouts=TEST_TIMEOUTS, batch_size=2)
        requests = [JudgeRequest.completion("Final Decision", max_tokens=12),
                    JudgeRequest.completion("The quick brown fox", max_tokens=12),
                    JudgeRequest.chat([("system", "judge"), ("user", "Which is better? [[A]]")], max_tokens=12)]
        over_http = await run(judge, requests)
    local = await model.generate(requests)
    assert [r.text for r in over_http] == [r.text for r in local]
    assert all(r.finish_reason in ("stop", "length") for r in over_http)
    assert any(r.text for r in over_http)


async def test_one_refused_prompt_in_a_batched_call_fails_alone():
    """With batch_size > 1, a prompt the server refuses (HTTP 400, over its context) must not take the
    other prompts of the same call down with it."""
    from judge_server import ContextOverflow

    def reply(prompt: str) -> str:
        if "huge" in prompt:
            raise ContextOverflow("over the context")
        return "ok:" + prompt

    with JudgeServer(ScriptedEngine(reply)) as server:
        prompts = [f"p{k}" for k in range(7)] + ["huge"]
        results = await run(client(server, batch_size=8, max_retries=1),
                            [JudgeRequest.completion(p, max_tokens=4) for p in prompts])
    assert [r.text for r in results[:7]] == [f"ok:p{k}" for k in range(7)]
    assert isinstance(results[7], JudgeFailure) and "400" in results[7].error


async def test_top_k_and_invalid_unicode_reach_the_server_without_breaking_the_batch(scripted):
    requests = [JudgeRequest.chat([("user", "hi")], max_tokens=4, top_k=20),
                JudgeRequest.completion("broken \ud800 text", max_tokens=4),
                JudgeRequest.completion("fine", max_tokens=4)]
    results = await run(client(scripted), requests)
    chat = [b for b in scripted.faults.bodies if "messages" in b]
    plain = [b for b in scripted.faults.bodies if b.get("prompt") == "fine"]
    assert chat[0]["top_k"] == 20 and "top_k" not in plain[0]
    assert isinstance(results[2], JudgeReply) and results[2].text == "echo:fine"


async def test_a_judge_tokenizer_gives_token_counts_to_the_domains(scripted):
    from judge_support import tiny_model_dir

    judge = client(scripted, tokenizer=tiny_model_dir())
    assert 0 < judge.count_tokens("Final Decision: Yes") < len("Final Decision: Yes")
    assert not hasattr(client(scripted), "count_tokens")  # no tokenizer: the domains bound bytes instead
