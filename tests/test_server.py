"""The HTTP reward service, started for real on loopback (in a thread, or as a process for signals)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import mdreward
from mdreward.domains.math import TABLE as MATH
from mdreward.integrations.server import (OpenRLHFOptions, RewardService, ServerLimits, bind_socket, build_server,
                                          create_app, label_fields)

from integration_helpers import SLOW, registry_with

TESTS = Path(__file__).parent


@contextlib.contextmanager
def running(service: RewardService):
    """Serve ``create_app(service)`` on a free loopback port in a thread; yield its base URL."""
    sock = bind_socket("127.0.0.1", 0)
    server = build_server(create_app(service), drain_s=5, log_level="warning")
    thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and service.ready):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def scorer():
    s = mdreward.Scorer(registry=registry_with(SLOW))
    yield s
    s.close()


@pytest.fixture(scope="module")
def base(scorer):
    service = RewardService(scorer, ServerLimits(max_body_bytes=200_000, max_records_per_request=100,
                                                 max_pending_records=400),
                            OpenRLHFOptions(default_domain="math", unscored_reward=-9.0))
    with running(service) as url:
        yield url


def math_record(i: int) -> dict:
    kind = i % 4
    response = ["<think>ok</think> \\boxed{%d}" % i, "<think>no</think> \\boxed{%d}" % (i + 1), "no format %d" % i,
                "<think>ok</think> <answer>%d/1</answer>" % i][kind]
    return {"id": f"r{i}", "domain": "math", "response": response, "reference": str(i), "metadata": {"k": i}}


def test_score_returns_every_record_in_order_with_its_fields(base):
    records = [math_record(i) for i in range(60)]
    records[5] = {"id": "no-response", "domain": "math", "reference": "1"}
    records[6] = {"domain": "maths", "response": "x"}
    records[7] = ["not", "an", "object"]
    reply = httpx.post(f"{base}/score", json={"records": records}, timeout=60)
    assert reply.status_code == 200
    results = reply.json()["results"]
    assert len(results) == len(records)
    expected_reward = {0: MATH["correct"], 1: MATH["wrong"], 2: MATH["format_error"], 3: MATH["correct"]}
    for i, (record, result) in enumerate(zip(records, results)):
        if i in (5, 6, 7):
            continue
        assert result["id"] == record["id"] and result["metadata"] == {"k": i}
        assert result["reward"] == expected_reward[i % 4], (i, result)
    assert results[5]["status"] == "error" and "'no-response'" in results[5]["error"] and "response" in results[5]["error"]
    assert results[5]["error"].startswith("records[5]: record 'no-response': ")  # one prefix shape, with or without id
    assert results[6]["reward"] is None and results[6]["error"].startswith("records[6]:") and "did you mean" in results[6]["error"]
    assert results[7]["record"] == ["not", "an", "object"] and results[7]["error"].startswith("records[7]:")


def test_bad_requests_get_clear_errors(base):
    assert httpx.post(f"{base}/score", content=b"{not json").status_code == 400
    reply = httpx.post(f"{base}/score", json={"records": 5})
    assert reply.status_code == 400 and "'records' list" in reply.json()["error"]
    big = {"records": [{"domain": "math", "response": "x" * 1000, "reference": "1"}] * 250}
    reply = httpx.post(f"{base}/score", json=big)
    assert reply.status_code == 413 and "limit" in reply.json()["error"]
    many = {"records": [{"domain": "math", "response": "x", "reference": "1"}] * 101}
    reply = httpx.post(f"{base}/score", json=many)
    assert reply.status_code == 413 and "101 records" in reply.json()["error"]
    assert httpx.get(f"{base}/score").status_code == 405


def test_health_readiness_and_metrics(base):
    assert httpx.get(f"{base}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{base}/readyz").json()
    assert ready["status"] == "ready" and "math" in ready["domains"] and "slow" in ready["domains"]
    assert set(ready["unusable"]).isdisjoint(ready["domains"])
    before = httpx.get(f"{base}/metrics").text
    httpx.post(f"{base}/score", json={"records": [math_record(0), math_record(2), {"domain": "nope", "response": "x"}]})
    after = httpx.get(f"{base}/metrics").text

    def value(text: str, line_start: str) -> float:
        lines = [row for row in text.splitlines() if row.startswith(line_start + " ")]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    assert value(after, 'mdreward_records_total{domain="math",status="ok"}') - \
        value(before, 'mdreward_records_total{domain="math",status="ok"}') == 1
    assert value(after, 'mdreward_records_total{domain="math",status="format_error"}') - \
        value(before, 'mdreward_records_total{domain="math",status="format_error"}') == 1
    assert value(after, 'mdreward_records_total{domain="unknown",status="error"}') - \
        value(before, 'mdreward_records_total{domain="unknown",status="error"}') == 1
    assert value(after, 'mdreward_http_requests_total{endpoint="score",code="200"}') - \
        value(before, 'mdreward_http_requests_total{endpoint="score",code="200"}') == 1
    assert value(after, 'mdreward_request_duration_seconds_count{endpoint="score"}') >= 1
    assert "# TYPE mdreward_request_duration_seconds histogram" in after
    assert value(after, "mdreward_pending_records") == 0


def test_openrlhf_endpoint(base):
    prompt = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    body = {
        "query": [prompt + "<think>add</think> \\boxed{5}", prompt + "<think>add</think> \\boxed{6}",
                  prompt + "<think>add</think> \\boxed{5}", "something else entirely", prompt + "\\boxed{5}",
                  prompt + "<think>x</think> \\boxed{5}"],
        "prompts": [prompt] * 6,
        "labels": ['{"domain": "math", "reference": "5"}', {"domain": "math", "reference": "5"}, "5", "5", "5",
                   '{"reference": "5", "domain": "nonexistent"}'],
    }
    for path in ("/openrlhf", "/get_reward"):
        reply = httpx.post(base + path, json=body, timeout=60)
        assert reply.status_code == 200
        out = reply.json()
        assert out["rewards"] == [MATH["correct"], MATH["wrong"], MATH["correct"], -9.0, MATH["format_error"], -9.0]
        assert out["scores"] == out["rewards"]
        assert out["extra_logs"]["mdreward_scored"] == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
        assert out["status"] == ["ok", "ok", "ok", "error", "format_error", "error"]
        assert "starts neither with prompts[3] nor with a tail of it" in out["errors"][3]
    reply = httpx.post(f"{base}/openrlhf", json={"query": ["a", "b"], "prompts": ["a"]})
    assert reply.status_code == 400 and "'prompts'" in reply.json()["error"]


def test_label_forms():
    assert label_fields({"domain": "code", "tests": {"stdio": []}}, None) == {"domain": "code", "tests": {"stdio": []}}
    assert label_fields("42", "math") == {"domain": "math", "reference": "42"}
    assert label_fields('{"reference": "1"}', "math") == {"domain": "math", "reference": "1"}
    with pytest.raises(ValueError, match="--default-domain"):
        label_fields("42", None)
    with pytest.raises(ValueError, match="not valid"):
        label_fields("{oops", "math")


def test_back_pressure_429_while_full_then_recovers(scorer):
    service = RewardService(scorer, ServerLimits(max_records_per_request=4, max_pending_records=4))
    slow = [{"domain": "slow", "response": "x", "id": f"s{i}", "metadata": {"sleep_s": 1.5}} for i in range(4)]
    with running(service) as url:
        results: dict[str, httpx.Response] = {}
        first = threading.Thread(target=lambda: results.setdefault("a", httpx.post(f"{url}/score",
                                                                                   json={"records": slow}, timeout=30)))
        first.start()
        deadline = time.monotonic() + 10
        while service.metrics.pending_records < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        rejected = httpx.post(f"{url}/score", json={"records": [slow[0]]})
        assert rejected.status_code == 429 and rejected.headers["retry-after"] == "1"
        first.join()
        assert results["a"].status_code == 200 and [r["reward"] for r in results["a"].json()["results"]] == [1.0] * 4
        retried = httpx.post(f"{url}/score", json={"records": [dict(slow[0], metadata={"sleep_s": 0})]})
        assert retried.status_code == 200
        assert service.metrics.pending_records == 0
        assert 'mdreward_http_requests_total{endpoint="score",code="429"} 1' in httpx.get(f"{url}/metrics").text


def test_bearer_token(scorer):
    service = RewardService(scorer, token="s3cret")
    with running(service) as url:
        records = {"records": [math_record(0)]}
        assert httpx.post(f"{url}/score", json=records).status_code == 401
        wrong = httpx.post(f"{url}/score", json=records, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = httpx.post(f"{url}/score", json=records, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["results"][0]["reward"] == MATH["correct"]
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200


def test_draining_service_refuses_new_work_and_is_not_ready(scorer):
    service = RewardService(scorer)
    with running(service) as url:
        service.draining = True  # what SIGTERM sets before uvicorn drains
        assert httpx.get(f"{url}/readyz").status_code == 503
        reply = httpx.post(f"{url}/score", json={"records": [math_record(0)]})
        assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
        assert httpx.get(f"{url}/healthz").status_code == 200


SLOW_APP = """
import sys
sys.path.insert(0, {tests!r})
import mdreward
from mdreward.integrations.server import RewardService, bind_socket, create_app, serve
from integration_helpers import SLOW, registry_with
scorer = mdreward.Scorer(registry=registry_with(SLOW))
sock = bind_socket("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
try:
    serve(create_app(RewardService(scorer)), drain_s=20, log_level="warning", sock=sock)
finally:
    scorer.close()
print("exited cleanly", flush=True)
"""


def _wait_ready(url: str, proc: subprocess.Popen, headers: dict | None = None) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", headers=headers).status_code == 200:
                return
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.1)


def test_sigterm_finishes_in_flight_requests_then_exits(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_APP.format(tests=str(TESTS))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        _wait_ready(url, proc)
        results: dict[str, httpx.Response] = {}
        record = {"domain": "slow", "response": "x", "id": "inflight", "metadata": {"sleep_s": 2.0}}
        client = threading.Thread(target=lambda: results.setdefault(
            "r", httpx.post(f"{url}/score", json={"records": [record]}, timeout=30)))
        client.start()
        time.sleep(0.7)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.HTTPError):  # no new connections once draining
            httpx.get(f"{url}/healthz", timeout=2)
        client.join(timeout=30)
        reply = results["r"]
        assert reply.status_code == 200 and reply.json()["results"][0]["reward"] == 1.0
        assert proc.wait(timeout=30) == 0
        assert "exited cleanly" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_mdreward_serve_command(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mdreward.cli", "serve", "--port", "0", "--token-file",
                             str(token_file), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        assert "listening on" in line, line
        url = line.strip().rsplit(" ", 1)[1]
        auth = {"Authorization": "Bearer tok-123"}
        _wait_ready(url, proc, auth)
        reply = httpx.post(f"{url}/score", json={"records": [math_record(1), math_record(3)]}, headers=auth)
        assert [r["reward"] for r in reply.json()["results"]] == [MATH["wrong"], MATH["correct"]]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def strict_json(text: str):
    """Parse as RFC 8259 JSON: NaN/Infinity (Python's extension) are refused."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_replies_are_strict_json_even_when_the_request_held_nan(base):
    body = ('{"records": [{"id": "n", "domain": "math", "response": "<think>a</think> \\\\boxed{1}", '
            '"reference": "1", "metadata": {"weight": NaN, "hi": Infinity, "lo": -Infinity, "s": "\\ud800"}}]}')
    reply = httpx.post(f"{base}/score", content=body.encode(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 200
    result = strict_json(reply.text)["results"][0]
    assert result["reward"] == MATH["correct"]
    assert result["metadata"] == {"weight": None, "hi": None, "lo": None, "s": "\ufffd"}  # a lone surrogate has no UTF-8


def test_a_refused_oversized_response_is_not_echoed(scorer):
    service = RewardService(scorer)  # default 32 MiB body limit: the record arrives, the response is over its cap
    huge = "<think>a</think> " + "7" * 2_000_000
    with running(service) as url:
        reply = httpx.post(f"{url}/score", json={"records": [{"id": "big", "domain": "math", "response": huge,
                                                              "reference": "7"}]}, timeout=60)
    assert reply.status_code == 200 and len(reply.content) < 10_000
    result = reply.json()["results"][0]
    assert result["status"] == "format_error" and result["response"] is None and result["response_chars"] == len(huge)


def test_every_error_reply_is_json_of_one_shape(scorer):
    service = RewardService(scorer, ServerLimits(max_body_bytes=1_000, max_records_per_request=2,
                                                 max_pending_records=2), token="t0k")
    auth = {"Authorization": "Bearer t0k"}
    with running(service) as url:
        replies = [
            (404, httpx.get(f"{url}/nowhere", headers=auth)),
            (405, httpx.get(f"{url}/score", headers=auth)),
            (401, httpx.post(f"{url}/score", json={"records": []})),
            (400, httpx.post(f"{url}/score", content=b"{nope", headers=auth)),
            (413, httpx.post(f"{url}/score", json={"records": [{"response": "x" * 2_000}]}, headers=auth)),
            (413, httpx.post(f"{url}/score", json={"records": [{}, {}, {}]}, headers=auth)),
        ]
    for status, reply in replies:
        assert reply.headers["content-type"] == "application/json", (status, reply.text)
        body = strict_json(reply.text)
        assert set(body) == {"error", "status"} and body["status"] == reply.status_code == status
        assert isinstance(body["error"], str) and body["error"]
    by_status = dict(replies)
    assert "/score" in by_status[404].json()["error"] and "POST" in by_status[405].json()["error"]


def test_serve_refuses_an_unknown_default_domain():
    proc = subprocess.run([sys.executable, "-m", "mdreward.cli", "serve", "--port", "0", "--default-domain", "maths"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--default-domain" in proc.stderr and "did you mean 'math'" in proc.stderr
    assert "listening" not in proc.stderr
    with mdreward.Scorer() as scorer, pytest.raises(KeyError, match="did you mean"):
        RewardService(scorer, openrlhf=OpenRLHFOptions(default_domain="maths"))


def test_openrlhf_truncated_prompt_is_scored(base):
    """OpenRLHF keeps the *tail* of a prompt too long for max_len (prompt_tokens[-max_prompt_length:]),
    so the query starts with part of prompts[i] only; the response must still be found and scored."""
    system = "You are a careful assistant. " * 20
    prompt = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    kept = prompt[len(prompt) // 2:]
    body = {"query": [kept + "<think>add</think> \\boxed{5}", "\ufffd" + kept[3:] + "<think>add</think> \\boxed{6}",
                      prompt[-10:] + "<think>add</think> \\boxed{5}", kept + "<think>add</think> " + prompt + "\\boxed{5}"],
            "prompts": [prompt] * 4, "labels": ["5"] * 4}
    out = httpx.post(f"{base}/openrlhf", json=body, timeout=60).json()
    assert out["status"][:2] == ["ok", "ok"] and out["rewards"][:2] == [MATH["correct"], MATH["wrong"]], out
    assert out["status"][2] == "error" and "tail" in out["errors"][2]  # too little of the prompt left to be sure
    assert out["rewards"][3] == MATH["correct"]  # the prompt repeated inside the response does not move the cut


def test_openrlhf_failures_are_logged_rate_limited(scorer, caplog):
    service = RewardService(scorer, openrlhf=OpenRLHFOptions(default_domain="math"))
    body = {"query": ["unrelated text"] * 3, "prompts": ["<|im_start|>user\nq<|im_end|>\n"] * 3, "labels": ["1"] * 3}
    with caplog.at_level(logging.WARNING, logger="mdreward.integrations.server"):
        for _ in range(5):
            asyncio.run(service.score_openrlhf(body))
    lines = [r.getMessage() for r in caplog.records if "could not be scored" in r.getMessage()]
    assert len(lines) == 1 and "3 records" in lines[0] and "query[0]" in lines[0], lines
