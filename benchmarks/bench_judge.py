"""Judge-client throughput against a local OpenAI-compatible server with a fixed service time.

The server (tests/judge_server.py, its own process) answers every call after exactly
``--service-ms`` milliseconds and does no other work, so the ideal throughput at concurrency c is
c / service time. The benchmark sends distinct completion requests (cache off, no batching)
through ``OpenAIJudge.generate`` at concurrency 1, 8 and 64 and reports requests/s against that
ideal. A raw ``httpx`` client at the same concurrency is measured in the same run as a second
reference (the cost of the openai client and our retry/limit layers). Target: >= 90% of ideal at 64.

    python benchmarks/bench_judge.py [--service-ms 50] [--seconds 2]
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
from mdreward.judges.openai_client import OpenAIJudge  # noqa: E402
from mdreward.timeouts import Timeouts  # noqa: E402


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
                       http_backend: str = "auto") -> tuple[float, float]:
    """(requests/s, client CPU ms per request) with ``concurrency`` judge requests in flight."""
    judge = OpenAIJudge(base_url=url, model="bench", max_concurrency=max(1, concurrency // batch_size),
                        batch_size=batch_size, cache_size=0, http_backend=http_backend,
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


async def measure(url: str, service_s: float, seconds: float) -> list[dict]:
    await wait_until_up(url)
    plan = [(1, "judge client", {}), (8, "judge client", {}), (64, "judge client", {}),
            (64, "judge client, httpx transport", {"http_backend": "httpx"}),
            (64, "raw aiohttp (no SDK): transport floor", None),
            (8, "judge client, batch_size=4 (2 calls x 4 prompts)", {"batch_size": 4}),
            (64, "judge client, batch_size=8 (8 calls x 8 prompts)", {"batch_size": 8})]
    rows = []
    for concurrency, mode, options in plan:
        ideal = concurrency / service_s
        count = max(concurrency * 4, int(ideal * seconds))
        if options is None:
            rps, cpu_ms = await raw_aiohttp(url, concurrency, count)
        else:
            rps, cpu_ms = await judge_client(url, concurrency, count, **options)
        rows.append({"concurrency": concurrency, "mode": mode, "requests": count, "ideal_rps": ideal,
                     "rps": rps, "vs_ideal": rps / ideal, "client_cpu_ms_per_request": cpu_ms})
        print(f"  {mode:52s} c={concurrency:<3d} {rps:7.0f} req/s  {rps / ideal:6.1%} of ideal", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=2.0, help="target duration of each measurement at ideal rate")
    args = parser.parse_args()
    process, url = start_server(args.service_ms)
    try:
        rows = asyncio.run(measure(url, args.service_ms / 1000.0, args.seconds))
    finally:
        process.terminate()
        process.wait(timeout=10)
    table = markdown_table(
        ["requests in flight", "client", "requests", "ideal req/s", "req/s", "vs ideal", "client CPU ms/request"],
        [[r["concurrency"], r["mode"], r["requests"], f"{r['ideal_rps']:.0f}", f"{r['rps']:.0f}",
          f"{r['vs_ideal']:.1%}", f"{r['client_cpu_ms_per_request']:.2f}"] for r in rows])
    print(f"\nJudge client throughput, fixed service time {args.service_ms:.0f} ms per HTTP call, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print(table)
    unbatched = rows[2]["vs_ideal"]
    batched = rows[-1]["vs_ideal"]
    print(f"\nconcurrency 64: {unbatched:.1%} of ideal unbatched, {batched:.1%} with batch_size=8 (target >= 90%)")
    path = save("bench_judge", {"service_ms": args.service_ms, "load_average": os.getloadavg()[0], "rows": rows,
                                "target_at_64": 0.9, "at_64_unbatched": unbatched, "at_64_batched": batched})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
