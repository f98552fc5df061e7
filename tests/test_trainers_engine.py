"""The local engine end to end on a tiny offline Qwen2 policy: a short smoke run, resume, metrics."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from trainers.config import from_dict, load_config
from trainers.curricula import MixedSampler, PhaseSampler, SelfPacedSampler
from trainers.engine import LocalEngine
from trainers.grpo import GRPOConfig
from trainers.rollout import GRPOObjective, split_responses
from trainers.tasks import Prompt, synthetic_prompts
from trainers.tiny import build_tiny_policy
from trainers.updates import CGPO, DomainBatch, Joint

from mdreward import Scorer


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    # 60 warm-start steps: responses vary in format and answer, so rewards within a group differ
    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy", sft_steps=60, lr=1e-2, batch_size=32, log_every=0)


@pytest.fixture(scope="module")
def scorer():
    with Scorer() as s:
        yield s


def config(policy_dir, out_dir, **update):
    cfg = {"model": {"kind": "tiny", "path": str(policy_dir)},
           "data": {"tasks": ["arith", "max"], "prompts_per_domain": 2, "eval_prompts": 4, "pool_size": 32},
           "rollout": {"group_size": 4, "max_new_tokens": 16},
           "update": {"rule": "cgpo", "lr": 1e-3, "mini_batches": 2, "micro_batch_size": 4, **update},
           "run": {"steps": 2, "out_dir": str(out_dir), "eval_every": 2, "checkpoint_every": 1, "plot_every": 2}}
    return from_dict(cfg)


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_smoke_run_writes_per_domain_metrics_plot_and_checkpoint(policy_dir, scorer, tmp_path):
    engine = LocalEngine(config(policy_dir, tmp_path / "run"), scorer=scorer)
    before = params(engine.model)
    records = engine.train()
    engine.close()
    assert not torch.equal(before, params(engine.model))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [-1, 0, 1]
    for r in records:
        assert set(r["train"]) == {"arith", "max"}
        for m in r["train"].values():
            assert {"reward", "correct_rate", "format_error_rate", "response_len", "unscored"} <= set(m)
            assert -1.0 <= m["reward"] <= 1.0 and m["n"] == 8
        for d in ("arith", "max"):
            assert {"kl", "clip_fraction", "loss", "grad_norm"} <= set(r["update"][d])
            assert math.isfinite(r["update"][d]["kl"])
    assert set(lines[-1]["eval"]) == {"arith", "max"}
    assert (tmp_path / "run" / "reward_curves.png").stat().st_size > 1000
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_continues_exactly(policy_dir, scorer, tmp_path):
    straight = LocalEngine(config(policy_dir, tmp_path / "a", rule="famo"), scorer=scorer)
    straight.cfg.run.eval_every = 0
    straight.train()
    first = LocalEngine(config(policy_dir, tmp_path / "b", rule="famo"), scorer=scorer)
    first.cfg.run.eval_every = 0
    first.cfg.run.steps = 1
    first.train()
    resumed = LocalEngine(config(policy_dir, tmp_path / "b", rule="famo"), scorer=scorer, resume=True)
    resumed.cfg.run.eval_every = 0
    assert resumed.start_step == 1
    resumed.train()
    assert torch.equal(params(straight.model), params(resumed.model))
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]


def test_unscored_records_are_counted_not_rewarded(policy_dir, scorer, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"id": f"ok{i}", "domain": "arith", "score_domain": "math", "prompt": f"{i}+1=?", "reference": str(i + 1)}
        for i in range(6)] + [{"id": "noref", "domain": "arith", "score_domain": "math", "prompt": "3+3=?"}]) + "\n")
    cfg = config(policy_dir, tmp_path / "run")
    cfg.data.tasks, cfg.data.prompt_files, cfg.data.eval_prompts = [], [str(prompts)], 0
    cfg.data.prompts_per_domain = 7
    engine = LocalEngine(cfg, scorer=scorer)
    record = engine.step(0)
    assert record["train"]["arith"]["unscored"] == 4  # the 4 responses to the prompt without a reference
    assert record["train"]["arith"]["n"] == 28


def test_recorded_old_logprobs_make_later_domains_off_policy(policy_dir, scorer, tmp_path):
    engine = LocalEngine(config(policy_dir, tmp_path / "run", lr=3e-2, max_grad_norm=None), scorer=scorer)
    engine.cfg.update.mini_batches = 1
    record = engine.step(0)
    order_first, order_second = engine.rule.domain_order(["arith", "max"], 0)
    assert abs(record["update"][order_first]["ratio"] - 1.0) < 1e-4   # on-policy: nothing moved yet
    assert abs(record["update"][order_second]["ratio"] - 1.0) > 1e-3  # the first domain's step moved the policy


def test_cgpo_single_domain_alpha_one_equals_joint_on_the_language_model(policy_dir, scorer, tmp_path):
    engine = LocalEngine(config(policy_dir, tmp_path / "run"), scorer=scorer)
    roll = engine.generator.generate(synthetic_prompts("arith", 4, 0), 4)
    from trainers.rollout import build_micro_batches, recorded_logprobs

    mb = build_micro_batches(roll, [0.5, -0.5] * 8, torch.zeros(0), None)
    old = recorded_logprobs(engine.model, mb.input_ids, mb.attention_mask, mb.response_mask.shape[1], 1.0)
    mb.old_logp, mb.ref_logp = old, old - 0.1
    obj = GRPOObjective(GRPOConfig(beta=0.01, loss_agg="seq-mean-token-mean"))
    state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    out = []
    for rule in (Joint(), CGPO(alpha=1.0)):
        engine.model.load_state_dict(state)
        opt = torch.optim.AdamW(engine.model.parameters(), lr=1e-3)
        micro = [mb.select(range(0, 8)), mb.select(range(8, 16))]
        rule.update(engine.model, opt, [DomainBatch("arith", micro)], obj, step=0)
        out.append(params(engine.model))
    assert torch.equal(out[0], out[1])


def test_response_split_at_first_eos():
    ids, mask, truncated = split_responses(torch.tensor([[5, 6, 0, 7, 0], [5, 6, 7, 8, 9]]), eos_id=0, pad_id=1)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert ids.tolist()[0] == [5, 6, 0, 1, 1] and truncated == [False, True]


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"\[update\]: unknown field\(s\) \['alhpa'\]"):
        from_dict({"update": {"alhpa": 1.2}})
    path = tmp_path / "c.toml"
    path.write_text('[update]\nrule = "joint"\n')
    cfg = load_config(path, ["update.alpha=0.9", "run.out_dir=x"])
    assert cfg.update.rule == "joint" and cfg.update.alpha == 0.9 and cfg.run.out_dir == "x"


def _pools():
    return {d: [Prompt(f"{d}{i}", d, "math", "q", "1") for i in range(4)] for d in ("math", "code", "writing")}


def test_curricula():
    pools = _pools()
    mixed = MixedSampler(pools, 2, seed=1).batch(3)
    assert [p.domain for p in mixed] == ["code", "code", "math", "math", "writing", "writing"]
    phases = PhaseSampler(pools, batch_size=2, total_steps=9)
    assert [phases.phase(s) for s in range(9)] == ["code"] * 3 + ["math"] * 3 + ["writing"] * 3
    assert {p.domain for p in phases.batch(4)} == {"math"}
    prompts = [p for pool in pools.values() for p in pool]
    rates = {p.id: (0.9 if p.domain == "writing" else 0.1 if p.domain == "code" else 0.5) for p in prompts}
    paced = SelfPacedSampler(prompts, rates, batch_size=4)
    assert [p.domain for s in range(3) for p in paced.batch(s)] == ["writing"] * 4 + ["math"] * 4 + ["code"] * 4


@pytest.mark.parametrize("curriculum", ["self_paced", "omni_thinker"])
def test_curriculum_runs_in_the_engine(policy_dir, scorer, tmp_path, curriculum):
    cfg = config(policy_dir, tmp_path / "run", rule="joint")
    cfg.data.curriculum, cfg.data.pool_size, cfg.data.eval_prompts = curriculum, 4, 0
    cfg.run.checkpoint_every = cfg.run.plot_every = 0
    engine = LocalEngine(cfg, scorer=scorer)
    records = engine.train()
    domains = [set(r["train"]) for r in records]
    if curriculum == "omni_thinker":
        assert domains == [{"arith"}, {"max"}]  # one domain per phase, in order
    else:
        assert all(d <= {"arith", "max"} for d in domains)


def test_vllm_rollouts_without_vllm_fail_loudly(policy_dir, scorer, tmp_path):
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed: the GPU path is exercised elsewhere")
    except ImportError:
        pass
    cfg = config(policy_dir, tmp_path / "run")
    cfg.rollout.engine = "vllm"
    with pytest.raises(RuntimeError, match="needs the 'vllm' extra"):
        LocalEngine(cfg, scorer=scorer)
