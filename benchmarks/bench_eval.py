"""Scoring's share of generation in a real `mdreward eval` run (SmolLM2-135M-Instruct on CPU, lm-eval's hf backend).

Runs `mdreward eval --model hf` on the seven tasks (offline data, a scripted WritingBench critic over real HTTP)
and reports, from the run's own summary.json, the wall time spent scoring against the time spent generating
(baseline: generation in the same run). The SuperGPQA items come from the test fixture (the shared data folder
has no SuperGPQA file).

    python benchmarks/bench_eval.py --limit 2 --max-gen-toks 64
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from common import markdown_table, save  # noqa: E402
from eval_support import offline_data_dir  # noqa: E402
from judge_server import JudgeServer, ScriptedEngine  # noqa: E402
from judge_support import route_script, smollm2_location  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", default="2")
    parser.add_argument("--max-gen-toks", default="64")
    parser.add_argument("--tasks", default="cgpo_seven")
    args = parser.parse_args()
    directory, gguf = smollm2_location()
    out = Path(tempfile.mkdtemp(prefix="mdreward-bench-eval-out-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with JudgeServer(ScriptedEngine(route_script)) as critic:
        subprocess.run([sys.executable, "-m", "mdreward.cli", "eval", "--model", "hf", "--model-args",
                        f"pretrained={directory},gguf_file={gguf},device=cpu", "--tasks", args.tasks,
                        "--limit", args.limit, "--max-gen-toks", args.max_gen_toks, "--data-dir",
                        str(offline_data_dir(Path(tempfile.mkdtemp(prefix="mdreward-bench-eval-")) / "data")),
                        "--judge-url", critic.url, "--judge-model", critic.model, "--output-dir", str(out)],
                       check=True, env=env, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    timing = summary["timing"]
    samples = sum(t["samples"] for t in summary["tasks"].values())
    rows = [[samples, f"{timing['generation_s']:.1f}", f"{timing['scoring_s']:.2f}",
             f"{1000 * timing['generation_s'] / samples:.0f}", f"{1000 * timing['scoring_s'] / samples:.1f}",
             f"**{100 * timing['scoring_share_of_generation']:.2f}%**"]]
    print(markdown_table(["samples", "generation s", "scoring s", "generation ms/sample", "scoring ms/sample",
                          "scoring / generation"], rows))
    print("scoring s by benchmark:", timing["scoring_s_by_benchmark"])
    print("saved", save("eval_smollm2", {"settings": summary["settings"], "timing": timing,
                                           "tasks": summary["tasks"], "load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
