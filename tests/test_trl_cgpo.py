"""CGPOTrainer: our update rules inside TRL's GRPOTrainer, on two gloo processes and on one.

The scenario (trl_targets.py): a tiny Qwen2, math + keyword rows scored by mdreward's TRL reward
functions, fixed rollouts, 3 optimizer steps of 2 accumulation micro-batches; with two ranks, rank 1
holds no keyword row. FSDP2 is covered by test_trainers_distributed.py on raw ``fully_shard``:
accelerate 1.15 enables FSDP only on accelerator devices.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

HERE = Path(__file__).resolve().parent
TARGETS = HERE / "trl_targets.py"

#: float32; two ranks reduce per-rank sums, one process sums all rows at once, and AdamW divides by
#: sqrt(v): measured differences up to 7e-7 after 3 steps (lr 3e-3); CGPO vs joint differ by ~1e-2.
TOLERANCE = 2e-6


def launch(*command: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("trl_cgpo")
    launch("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(TARGETS), str(out), "ddp")
    launch(str(TARGETS), str(out), "single")
    load = lambda name: torch.load(out / name, weights_only=False)  # noqa: E731
    return {"ranks": [load("ddp-rank0.pt"), load("ddp-rank1.pt")], "single": load("single-rank0.pt")}


@pytest.mark.parametrize("rule", ["cgpo", "joint"])
def test_two_ranks_equal_one_process_with_a_rank_missing_a_domain(runs, rule):
    rank0, rank1 = (r[rule] for r in runs["ranks"])
    assert rank0["distributed_type"] == "DistributedType.MULTI_CPU"
    assert all("keyword" in set(window) for window in rank0["domains_seen"])
    assert all(set(window) == {"math"} for window in rank1["domains_seen"]), "rank 1 was meant to hold no keyword row"
    assert len(rank0["domains_seen"]) == 3 and all(rank0["stored_logps"]) and all(rank1["stored_logps"])
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), f"{name} differs across ranks"
    assert max_diff(rank0["params"], runs["single"][rule]["params"]) <= TOLERANCE


def test_joint_rule_reproduces_trls_own_step_and_cgpo_does_not(runs):
    single = runs["single"]
    assert max_diff(single["joint"]["params"], single["None"]["params"]) <= TOLERANCE
    assert max_diff(single["cgpo"]["params"], single["joint"]["params"]) > 1000 * TOLERANCE


def test_per_domain_metrics_are_global_and_in_trls_logs(runs):
    for run in (runs["ranks"][0]["cgpo"], runs["ranks"][1]["cgpo"], runs["single"]["cgpo"]):
        steps = [e for e in run["logs"] if "update/keyword/share" in e]
        assert len(steps) == 3
        for entry in steps:  # 4 keyword rows of 16 in every step, on every rank (rank 1 has none itself)
            assert entry["update/keyword/share"] == pytest.approx(0.25)
            assert entry["update/math/share"] == pytest.approx(0.75)
            assert {entry["update/keyword/position"], entry["update/math/position"]} == {0.0, 1.0}
            assert entry["update/math/grad_norm"] > 0 and entry["mdreward/keyword/reward_mean"] == pytest.approx(0.5)
            assert entry["grad_norm"] == 0.0  # the Trainer's own clip/step found no gradient left


def test_saved_model_loads_with_from_pretrained(runs):
    from transformers import AutoModelForCausalLM

    single = runs["single"]["cgpo"]
    model = AutoModelForCausalLM.from_pretrained(single["saved"])
    loaded = {n: p.detach() for n, p in model.named_parameters()}
    assert max_diff(loaded, {n: single["params"][n] for n in loaded}) == 0.0


def test_refuses_what_it_cannot_run(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig

    from trainers.trl_engine import CGPOTrainer

    sys.path.insert(0, str(HERE))
    from trl_targets import build_tokenizer, tiny_qwen2

    tokenizer = build_tokenizer()
    data = Dataset.from_list([{"prompt": "What is 1 + 2?", "domain": "math"}] * 4)

    def reward(completions, **_):
        return [0.0] * len(completions)

    def make_with(dataset, domain_column="domain", **options):
        args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2,
                          report_to="none", use_cpu=True, max_completion_length=4, **options)
        return CGPOTrainer(model=tiny_qwen2(tokenizer), reward_funcs=[reward], args=args, train_dataset=dataset,
                           processing_class=tokenizer, domain_column=domain_column)

    def make(**options):
        return make_with(data, **options)

    with pytest.raises(ValueError, match="steps_per_generation"):
        make(gradient_accumulation_steps=2, steps_per_generation=3)
    with pytest.raises(ValueError, match="entropy"):
        make(entropy_coef=0.01)
    with pytest.raises(ValueError, match="no 'topic' column"):
        make_with(data, domain_column="topic")
    holes = Dataset.from_list([{"prompt": "What is 1 + 2?", "domain": "math"}, {"prompt": "Hi", "domain": None}])
    with pytest.raises(ValueError, match=r"rows \[1\] \(1 in all\) have no 'domain' value"):
        make_with(holes)
    trainer = make()
    trainer.args.fp16 = True
    with pytest.raises(ValueError, match="fp16"):
        trainer._refuse_unsupported()
    trainer.args.fp16 = False
    trainer.is_deepspeed_enabled = True
    with pytest.raises(ValueError, match="DeepSpeed"):
        trainer._refuse_unsupported()
