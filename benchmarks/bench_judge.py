"""Judge-client throughput against a local OpenAI-compatible server with a fixed service time.

The server (tests/judge_server.py --raw, its own process, on uvloop when installed) answers every
call after exactly ``--service-ms`` milliseconds and does almost no other work, so the ideal
throughput at concurrency c is c / service time. Each row sends distinct requests (cache off) at a
fixed number in flight for about ``--seconds`` at the ideal rate (steady state, not the first
burst), ``--repeats`` times; the table shows the median run. Rows: the judge client
(``OpenAIJudge.generate``, default aiohttp transport) at 1, 8 and 64; the science domain end to end
through ``Scorer.score_batch`` (prompt building, verdict parsing); the openai SDK transports; a bare
aiohttp loop (the transport alone, one task per request); completion batching. Target: >= 90% of
ideal at 64.

    python benchmarks/bench_judge.py [--service-ms 50] [--seconds 5] [--repeats 3]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import markdown_table, save  # noqa: E402

from mdreward.judges.base import JudgeFailure, JudgeRequest  # noqa: E402
from mdreward.scoring import Scorer, ScoringConfig  # noqa: E402
from mdreward.judges.openai_client import OpenAIJudge  # noqa: E402
from mdreward.timeouts import Timeouts  # noqa: E402


def server_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def pin_apart(server_pid: int) -> str:
    """The server on the last CPU and this client on the others, so they never share a core (a real
    judge server runs on its own machine); a no-op where affinity cannot be set."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if len(cpus) < 2:
        return "not pinned"
    os.sched_setaffinity(server_pid, {cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))
    return f"server on CPU {cpus[-1]}, client on CPU {','.join(map(str, cpus[:-1]))}"


def start_server(service_ms: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "judge_server.py"), "--raw",
                                "--service-ms", str(service_ms)], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        process.kill()
        raise RuntimeError("judge server did not start")
    return process, json.loads(line)["url"]


async def wait_until_up(url: str) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(url + "/models")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("judge server is not answering")


async def judge_client(url: str, concurrency: int, count: int, *, batch_size: int = 1,
                       transport: str = "aiohttp") -> tuple[float, float]:
    """(requests/s, client CPU ms per request) with ``concurrency`` judge requests in flight."""
    judge = OpenAIJudge(base_url=url, model="bench", max_concurrency=max(1, concurrency // batch_size),
                        batch_size=batch_size, cache_size=0, transport=transport,
                        timeouts=Timeouts(judge_request_s=30, judge_total_s=300))
    requests = [JudgeRequest.completion(f"prompt {i}", max_tokens=8) for i in range(count)]
    await judge.generate(requests[:concurrency])  # warm the connection pool
    started, cpu = time.perf_counter(), time.process_time()
    replies = await judge.generate(requests)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await judge.aclose()
    failures = sum(isinstance(r, JudgeFailure) for r in replies)
    if failures:
        raise RuntimeError(f"{failures} of {count} requests failed")
    return count / elapsed, 1000 * cpu / count


def science_domain(url: str, concurrency: int, count: int) -> tuple[float, float]:
    """The science domain end to end (sync ``Scorer.score_batch``): every answer needs the verifier."""
    judge = {"url": url, "model": "bench", "max_concurrency": concurrency, "cache_size": 0}
    samples = [{"id": f"s{i}", "domain": "science", "prompt": f"Question {i}: what is the value?",
                "response": f"<think>work {i}</think> <answer>{i} units</answer>", "reference": f"{i + 1} units"}
               for i in range(count + concurrency)]
    with Scorer(ScoringConfig(domain_options={"science": {"judge": judge}})) as scorer:
        scorer.score_batch(samples[:concurrency])  # warm: connections, domain
        started, cpu = time.perf_counter(), time.process_time()
        scores = scorer.score_batch(samples[concurrency:])
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    unscored = [s for s in scores if s.reward is None]
    if unscored:
        raise RuntimeError(f"{len(unscored)} of {count} samples unscored: {unscored[0].error}")
    return count / elapsed, 1000 * cpu / count


async def raw_aiohttp(url: str, concurrency: int, count: int) -> tuple[float, float]:
    """The transport alone (no openai SDK, no judge layers): the floor of client cost."""
    import aiohttp

    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(i: int) -> None:
            async with semaphore:
                async with session.post(url + "/completions", json={"model": "bench", "prompt": f"p{i}",
                                                                     "max_tokens": 8}) as response:
                    response.raise_for_status()
                    await response.json()

        await asyncio.gather(*(one(i) for i in range(concurrency)))
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(i) for i in range(count)))
        return count / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / count


PLAN = [(1, "judge client", {}), (8, "judge client", {}), (64, "judge client", {}),
        (64, "science domain via Scorer.score_batch", "science"),
        (64, "judge client, openai SDK transport", {"transport": "openai"}),
        (64, "judge client, openai SDK over httpx", {"transport": "openai-httpx"}),
        (64, "bare aiohttp loop: transport floor", "bare"),
        (8, "judge client, batch_size=4 (2 calls x 4 prompts)", {"batch_size": 4}),
        (64, "judge client, batch_size=8 (8 calls x 8 prompts)", {"batch_size": 8})]


async def measure_row(url: str, concurrency: int, count: int, options: dict | str) -> tuple[float, float]:
    if options == "bare":
        return await raw_aiohttp(url, concurrency, count)
    if options == "science":  # the sync Scorer runs its own event loop thread
        return await asyncio.to_thread(science_domain, url, concurrency, count)
    return await judge_client(url, concurrency, count, **options)


async def measure(url: str, service_s: float, seconds: float, repeats: int) -> list[dict]:
    await wait_until_up(url)
    rows = []
    for concurrency, mode, options in PLAN:
        ideal = concurrency / service_s
        count = max(concurrency * 4, int(ideal * seconds))
        runs = [await measure_row(url, concurrency, count, options) for _ in range(repeats)]
        rps, cpu_ms = sorted(runs)[len(runs) // 2]
        rows.append({"concurrency": concurrency, "mode": mode, "requests": count, "ideal_rps": ideal,
                     "rps": rps, "vs_ideal": rps / ideal, "client_cpu_ms_per_request": cpu_ms,
                     "runs_vs_ideal": [r / ideal for r, _ in runs]})
        print(f"  {mode:52s} c={concurrency:<3d} {rps:7.0f} req/s  {rps / ideal:6.1%} of ideal "
              f"(runs: {', '.join(f'{r / ideal:.1%}' for r, _ in runs)})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="target duration of each run at the ideal rate")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported")
    args = parser.parse_args()
    process, url = start_server(args.service_ms)
    pinning = pin_apart(process.pid)
    try:
        rows = asyncio.run(measure(url, args.service_ms / 1000.0, args.seconds, args.repeats))
    finally:
        process.terminate()
        process.wait(timeout=10)
    table = markdown_table(
        ["requests in flight", "client", "requests", "ideal req/s", "req/s (median)", "vs ideal", "all runs",
         "client CPU ms/request"],
        [[r["concurrency"], r["mode"], r["requests"], f"{r['ideal_rps']:.0f}", f"{r['rps']:.0f}",
          f"{r['vs_ideal']:.1%}", " ".join(f"{v:.0%}" for v in r["runs_vs_ideal"]),
          f"{r['client_cpu_ms_per_request']:.2f}"] for r in rows])
    print(f"\nJudge client throughput, fixed service time {args.service_ms:.0f} ms per HTTP call, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, server loop {server_loop()}, {pinning}\n")
    print(table)
    unbatched = rows[2]["vs_ideal"]
    batched = rows[-1]["vs_ideal"]
    print(f"\nconcurrency 64: {unbatched:.1%} of ideal unbatched, {batched:.1%} with batch_size=8 (target >= 90%)")
    path = save("bench_judge", {"service_ms": args.service_ms, "seconds": args.seconds, "repeats": args.repeats,
                                "server_loop": server_loop(), "pinning": pinning, "load_average": os.getloadavg()[0], "rows": rows,
                                "target_at_64": 0.9, "at_64_unbatched": unbatched, "at_64_batched": batched})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
