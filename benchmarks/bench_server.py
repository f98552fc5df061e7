"""Load test of the HTTP reward service (``mdreward serve``) against in-process scoring.

A real ``mdreward serve`` process on loopback; N concurrent clients (threads, each with a
keep-alive ``http.client`` connection) send ``POST /score`` requests of B records for D seconds,
cycling over a pool built from MATH500 (correct, wrong, malformed and rewritten answers) and, when
the code domain is installed, HumanEval (canonical solutions and ``return None`` bodies). Every
result is checked against the reward the in-process ``Scorer`` gives the same record: nothing
lost, duplicated or mismatched. A 429 is retried after its ``Retry-After`` and counted.

Baseline (same run): the in-process ``Scorer.ascore_batch`` with the same number of concurrent
loops, the same batch size and duration: the same work without HTTP. Both see repeated records
(the pool is cycled), so both hit the math cache after the first pass; the pool is large enough
that the first pass is real work.

    python benchmarks/bench_server.py [--clients 32] [--duration 30] [--batch 8]
                                      [--records mixed|fast] [--no-abba]

The machine is shared: each phase records the load average, and the default ABBA order
(in-process, server, server, in-process) cancels a linear drift in background load.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import httpx
from common import SHARED_DATA, latency_summary, markdown_table, save

import mdreward


def math_records(rng: random.Random, fast_only: bool = False) -> list[dict[str, Any]]:
    """Four responses per MATH500 problem; ``fast_only`` drops the wrong ones (the only ones that
    need a symbolic check), so that scoring is cheap and the HTTP layer's own cost shows."""
    problems = [json.loads(line) for line in (SHARED_DATA / "math500" / "test.jsonl").read_text().splitlines() if line]
    answers = [p["answer"] for p in problems]
    records = []
    for i, p in enumerate(problems):
        other = answers[(i + 7) % len(answers)]
        for kind, response in (("correct", f"<think>{p['solution'][:300]}</think> The answer is \\boxed{{{p['answer']}}}."),
                               ("spaced", f"<think>short</think> <answer> {p['answer']} </answer>"),
                               ("wrong", f"<think>guess</think> \\boxed{{{other}}}"),
                               ("malformed", f"The answer is \\boxed{{{p['answer']}}}")):
            if not (fast_only and kind == "wrong"):
                records.append({"domain": "math", "response": response, "reference": p["answer"],
                                "id": f"math-{i}-{kind}"})
    rng.shuffle(records)
    return records


def code_records() -> list[dict[str, Any]]:
    with gzip.open(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    records = []
    for p in problems:
        tests = {"assert": p["test"], "entry_point": p["entry_point"]}
        good = p["prompt"] + p["canonical_solution"]
        bad = p["prompt"] + "    return None\n"
        for kind, code in (("correct", good), ("none", bad)):
            records.append({"domain": "code", "response": f"<think>write it</think>\n```python\n{code}\n```",
                            "tests": tests, "id": f"code-{p['task_id']}-{kind}"})
    return records


def start_server(max_pending: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "mdreward.cli", "serve", "--port", "0", "--log-level", "warning",
                             "--max-pending", str(max_pending), "--max-records", str(min(max_pending, 10_000))],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line}")
    url = line.strip().rsplit(" ", 1)[1]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server never became ready")


def load(url: str, pool: list[dict[str, Any]], expected: dict[str, tuple[Any, str]], clients: int,
         duration: float, batch: int) -> dict[str, Any]:
    """``clients`` threads, each with its own keep-alive connection (``http.client``, what ``requests``
    uses: OpenRLHF's client). httpx's AsyncClient was the bottleneck here (about 100 requests/s at 32
    concurrent requests, against 700 for these threads), so it would have measured itself."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    stats: dict[str, Any] = {"latencies": [], "records": 0, "requests": 0, "rejected_429": 0, "failed": 0,
                             "mismatched": 0, "lost": 0}
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client(number: int) -> None:
        rng = random.Random(number)
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        sequence = 0
        while time.monotonic() < stop_at:
            start = rng.randrange(len(pool))
            chunk = [dict(pool[(start + j) % len(pool)]) for j in range(batch)]
            for j, record in enumerate(chunk):  # a unique id per sent record: duplicates are detectable
                record["id"] = f"{record['id']}#{number}.{sequence}.{j}"
            sequence += 1
            body = json.dumps({"records": chunk}).encode()
            while True:
                sent = time.perf_counter()
                try:
                    connection.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
                    reply = connection.getresponse()
                    payload = reply.read()
                except (OSError, http.client.HTTPException):
                    connection.close()
                    with lock:
                        stats["failed"] += 1
                        stats["lost"] += len(chunk)
                    break
                if reply.status == 429:
                    with lock:
                        stats["rejected_429"] += 1
                    time.sleep(float(reply.getheader("Retry-After", "1")))
                    continue
                elapsed = time.perf_counter() - sent
                results = json.loads(payload)["results"] if reply.status == 200 else []
                with lock:
                    if reply.status != 200:
                        stats["failed"] += 1
                        stats["lost"] += len(chunk)
                        break
                    stats["latencies"].append(elapsed)
                    stats["requests"] += 1
                    stats["lost"] += max(0, len(chunk) - len(results))
                    for record, result in zip(chunk, results):
                        seen[result.get("id")] += 1
                        base = record["id"].split("#", 1)[0]
                        if result.get("id") != record["id"] or (result["reward"], result["status"]) != expected[base]:
                            stats["mismatched"] += 1
                    stats["records"] += len(results)
                break
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats["wall_s"] = time.perf_counter() - started
    stats["duplicated"] = sum(n - 1 for n in seen.values() if n > 1)
    return stats


def in_process(pool: list[dict[str, Any]], clients: int, duration: float, batch: int) -> dict[str, Any]:
    """The same request stream without HTTP: ``clients`` concurrent ``ascore_batch`` loops on one Scorer."""
    latencies: list[float] = []
    records = 0

    async def run(scorer: mdreward.Scorer) -> float:
        nonlocal records
        stop_at = time.monotonic() + duration

        async def client(number: int) -> None:
            nonlocal records
            rng = random.Random(number)
            while time.monotonic() < stop_at:
                start = rng.randrange(len(pool))
                chunk = [pool[(start + j) % len(pool)] for j in range(batch)]
                t = time.perf_counter()
                await scorer.ascore_batch(chunk)
                latencies.append(time.perf_counter() - t)
                records += len(chunk)

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return time.perf_counter() - started

    with mdreward.Scorer() as scorer:
        scorer.score_batch([r for r in pool if r["domain"] == "math"][:1] +
                           [r for r in pool if r["domain"] != "math"][:1])  # start workers, as the server's warm-up does
        wall = asyncio.run(run(scorer))
    return {"records": records, "wall_s": wall, "latencies": latencies}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=8, help="records per request (a GRPO group)")
    parser.add_argument("--max-pending", type=int, default=50_000)
    parser.add_argument("--records", choices=["mixed", "fast"], default="mixed",
                        help="mixed: MATH500 (+HumanEval); fast: only math records decided without sympy, "
                             "to show the HTTP layer's own cost")
    parser.add_argument("--no-abba", dest="abba", action="store_false",
                        help="one phase each (in-process, server) instead of in-process, server, server, in-process")
    args = parser.parse_args()

    rng = random.Random(0)
    domains = mdreward.load_domains().names()
    pool = math_records(rng, fast_only=args.records == "fast")
    if "code" in domains and args.records == "mixed":
        pool += code_records()
        rng.shuffle(pool)
    print(f"pool: {len(pool)} records ({Counter(r['domain'] for r in pool)}); computing expected rewards in-process",
          file=sys.stderr)
    with mdreward.Scorer() as scorer:
        scores = scorer.score_batch(pool)
    expected = {r["id"]: (s.reward, s.status.value) for r, s in zip(pool, scores)}
    print(f"expected statuses: {Counter(v[1] for v in expected.values())}", file=sys.stderr)

    # ABBA order (in-process, server, server, in-process): drift in the machine's load cancels out.
    phases: dict[str, list[dict[str, Any]]] = {"in_process": [], "server": []}
    exit_codes, metrics = [], ""
    for kind in ("in_process", "server", "server", "in_process")[: 4 if args.abba else 2]:
        load_before = os.getloadavg()[0]
        if kind == "in_process":
            print(f"baseline: in-process Scorer.ascore_batch, {args.clients} concurrent loops, {args.duration:.0f}s",
                  file=sys.stderr)
            result = in_process(pool, args.clients, args.duration, args.batch)
        else:
            proc, url = start_server(args.max_pending)
            try:
                print(f"load: {args.clients} clients x {args.duration:.0f}s against {url}", file=sys.stderr)
                result = load(url, pool, expected, args.clients, args.duration, args.batch)
                metrics = httpx.get(f"{url}/metrics").text
            finally:
                proc.send_signal(signal.SIGTERM)
                exit_codes.append(proc.wait(timeout=60))
        result["load_avg"] = (load_before, os.getloadavg()[0])
        phases[kind].append(result)

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        records = sum(r["records"] for r in runs)
        wall = sum(r["wall_s"] for r in runs)
        return {"records": records, "wall_s": wall, "records_per_s": records / wall,
                **latency_summary([x for r in runs for x in r["latencies"]]),
                "per_phase_records_per_s": [round(r["records"] / r["wall_s"], 1) for r in runs],
                "load_avg_1min": [tuple(round(v, 1) for v in r["load_avg"]) for r in runs]}

    server, base = summary(phases["server"]), summary(phases["in_process"])
    counts = {k: sum(r.get(k, 0) for r in phases["server"])
              for k in ("requests", "rejected_429", "failed", "lost", "duplicated", "mismatched")}
    rows = [[name, args.clients, s["records"], f"{s['records_per_s']:.0f}", s["per_phase_records_per_s"],
             f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", s["load_avg_1min"]]
            for name, s in (("mdreward serve (HTTP)", server), ("in-process Scorer (baseline)", base))]
    print(markdown_table(["path", "clients", "records", "records/s", "per phase", "p50 ms/request",
                          "p99 ms/request", "load avg (start, end)"], rows))
    ratio = server["records_per_s"] / base["records_per_s"]
    print(f"\nserver/in-process throughput ratio: {ratio:.2f}x")
    print(", ".join(f"{k}: {v}" for k, v in counts.items()) + f", server exit codes after SIGTERM: {exit_codes}")
    path = save("server" if args.records == "mixed" else "server_fast", {
        "records_kind": args.records, "clients": args.clients, "duration_s": args.duration, "batch": args.batch, "pool": len(pool),
        "domains": sorted({r["domain"] for r in pool}), "order": "ABBA" if args.abba else "AB",
        "server": server, "in_process": base, "ratio_server_over_in_process": ratio, **counts,
        "server_exit_codes": exit_codes,
        "metrics_records_lines": [line for line in metrics.splitlines() if line.startswith("mdreward_records_total")],
    })
    print(f"saved {path}", file=sys.stderr)
    ok = counts["lost"] == counts["duplicated"] == counts["mismatched"] == counts["failed"] == 0
    return 0 if ok and all(code == 0 for code in exit_codes) else 1


if __name__ == "__main__":
    sys.exit(main())
