"""What the sandbox's syscall filter costs: the same sandbox with the filter, with an
allow-everything filter (one instruction: what remains is the kernel's cost of having a filter at
all, e.g. speculation mitigations it turns on for filtered tasks), and without one, in the same run.

1. Per syscall: a candidate program times 300,000 ``getppid()`` calls (the cheapest syscall, so
   the filter's share is largest) and reports ns per call.
2. Per job: the 164 HumanEval canonical solutions through one slot, problems/s.

    python benchmarks/bench_sandbox_filter.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time

from common import ROOT, markdown_table, save

sys.path.insert(0, str(ROOT / "tests"))
from code_support import humaneval_problems, humaneval_tests  # noqa: E402

import mdreward.sandbox.local as local  # noqa: E402
from mdreward.domains.code import job_for  # noqa: E402
from mdreward.sandbox import LocalSandbox, StdioCase, StdioJob  # noqa: E402

ALLOW_ALL = struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000)
SYSCALLS = ("import os, time\nt = time.perf_counter()\nfor _ in range(300000):\n    os.getppid()\n"
            "print(round((time.perf_counter() - t) / 300000 * 1e9, 1))")


def syscall_ns(sandbox: LocalSandbox) -> float:
    """The program's printed figure (read from the report, before the scorer compares it)."""
    seen: list[str] = []
    original = local.stdio_result

    def spy(index, case, report, tol):
        seen.append(report["stdout"])
        return original(index, case, report, tol)

    local.stdio_result = spy
    try:
        sandbox.run_blocking(StdioJob(SYSCALLS, (StdioCase("", ""),)))
    finally:
        local.stdio_result = original
    return float(seen[-1])


def jobs_per_s(sandbox: LocalSandbox, jobs: list) -> float:
    started = time.perf_counter()
    for job in jobs:
        assert sandbox.run_blocking(job).passed
    return len(jobs) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    jobs = [job_for(humaneval_tests(p), p["prompt"] + p["canonical_solution"], stop_first=True)
            for p in humaneval_problems()]
    results: dict[str, dict[str, list[float]]] = {name: {"ns": [], "jobs": []} for name in ("filter", "allow-all", "none")}
    with LocalSandbox(workers=1) as filtered, LocalSandbox(workers=1) as allow_all, LocalSandbox(workers=1) as bare:
        for sandbox, program in ((allow_all, ALLOW_ALL), (bare, None)):
            sandbox.seccomp_program = program
            sandbox._slots[0].stop()  # restarts with that program on its first job
        for _ in range(args.repeats):
            for name, sandbox in (("filter", filtered), ("allow-all", allow_all), ("none", bare)):
                results[name]["ns"].append(syscall_ns(sandbox))
                results[name]["jobs"].append(jobs_per_s(sandbox, jobs))
    medians = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    print(markdown_table(["sandbox", "getppid ns/call", "HumanEval jobs/s (1 slot)"],
                         [[n, f"{m['ns']:.1f}", f"{m['jobs']:.1f}"] for n, m in medians.items()]))
    print(f"filter vs none: {medians['filter']['ns'] - medians['none']['ns']:+.1f} ns per syscall, "
          f"jobs/s ratio {medians['filter']['jobs'] / medians['none']['jobs']:.3f}")
    save("sandbox_filter", {"repeats": results, "medians": medians})
    return 0


if __name__ == "__main__":
    sys.exit(main())
