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
from trainers.engine import LocalEngine, domain_metrics
from trainers.grpo import GRPOConfig, group_advantages
from trainers.metrics import is_success, success_threshold
from trainers.rollout import (GRPOObjective, HFGenerator, _pad_left, build_micro_batches, recorded_logprobs,
                              split_responses)
from trainers.tasks import Prompt, synthetic_prompts
from trainers.tiny import build_tiny_policy
from trainers.updates import CGPO, DomainBatch, shares

from mdreward import Score, Scorer


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


class OutageScorer:
    """The real scorer, with an infrastructure outage on the last response of every group."""

    def __init__(self, inner: Scorer, group_size: int) -> None:
        self.inner, self.registry, self.group_size = inner, inner.registry, group_size

    def score_batch(self, samples):
        return [Score.unscored("judge timed out (simulated outage)") if i % self.group_size == self.group_size - 1
                else score for i, score in enumerate(self.inner.score_batch(samples))]


def test_unscored_responses_are_out_of_the_statistics_and_the_loss(policy_dir, scorer, tmp_path):
    cfg = config(policy_dir, tmp_path / "run", mini_batches=1, rule="joint")
    cfg.grpo.loss_agg = "seq-mean-token-mean"  # units = sequences: the loss's denominator counts rows
    cfg.data.prompts_per_domain = 3
    engine = LocalEngine(cfg, scorer=OutageScorer(scorer, cfg.rollout.group_size))
    record = engine.step(0)
    batch = engine.last_batch
    failed = [i for i, s in enumerate(batch.scores) if s.reward is None]
    assert failed == list(range(3, len(batch.scores), 4))
    rewards = [s.reward for s in batch.scores]
    assert batch.advantages == group_advantages(rewards, batch.rollouts.group_ids)
    assert all(batch.advantages[i] == 0.0 for i in failed)
    # An outage must not read as a wrong answer: had it been rewarded -0.5, advantages would differ here.
    as_wrong = group_advantages([-0.5 if r is None else r for r in rewards], batch.rollouts.group_ids)
    assert as_wrong != batch.advantages
    assert batch.trained_rows == [i for i in range(len(rewards)) if i not in failed]
    for domain in ("arith", "max"):  # 3 prompts x 4 responses, one of each group unscored: 9 rows in the loss
        assert record["update"][domain]["units"] == 9
        assert record["train"][domain]["unscored"] == 3


def test_success_is_defined_per_domain_not_by_a_correct_flag():
    from mdreward.domains import code, math as math_domain, science, writing

    assert success_threshold(math_domain.TABLE) == 1.0 and success_threshold(code.TABLE) == 1.0
    assert success_threshold(science.TABLE) == 0.5    # correct, less a length penalty
    assert success_threshold(writing.TABLE) == 1.0    # better than the reference
    essays = [Prompt(f"e{i}", "essay", "writing", "q") for i in range(4)]
    verdicts = [Score.ok(1.0, verdict="better"), Score.ok(0.25, verdict="tie"), Score.ok(-0.5, verdict="worse"),
                Score.unscored("judge down")]  # writing never sets components["correct"]
    rate = domain_metrics(essays, verdicts, None, lambda d, s: is_success(s, 1.0))["essay"]["correct_rate"]
    assert rate == pytest.approx(1 / 3)
    assert not is_success(Score.unscored("x"), -1.0)


def test_pass_rates_and_metrics_use_the_per_domain_success_threshold(policy_dir, scorer, tmp_path):
    cfg = config(policy_dir, tmp_path / "run")
    cfg.data.success_threshold = {"arith": -0.5}  # a well-formatted answer counts, right or wrong
    cfg.data.eval_prompts = 0
    engine = LocalEngine(cfg, scorer=scorer)
    assert engine.success_thresholds == {"arith": -0.5, "max": 1.0}
    prompts = synthetic_prompts("arith", 6, 1) + synthetic_prompts("max", 6, 1)
    torch.manual_seed(0)
    rates = engine.estimate_pass_rates(prompts, samples=4)
    torch.manual_seed(0)
    roll = engine.generator.generate(prompts, 4)
    scores = scorer.score_batch(engine._samples(roll, "pass-rate"))
    for j, p in enumerate(prompts):
        group = scores[j * 4:(j + 1) * 4]
        ok = [s.status.value == "ok" for s in group] if p.domain == "arith" else [s.reward == 1.0 for s in group]
        assert rates[p.id] == sum(ok) / 4, (p.id, [s.reward for s in group])
    with pytest.raises(ValueError, match="success_threshold names unknown domains"):
        cfg.data.success_threshold = {"prog": 0.0}
        LocalEngine(cfg, scorer=scorer)


def test_sampler_ignores_the_models_generation_config(policy_dir):
    """Sampling is from pi / T: a checkpoint's repetition penalty or top-k must not reshape it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    tok = AutoTokenizer.from_pretrained(policy_dir)
    gen = HFGenerator(model, tok, max_new_tokens=16, temperature=1.0)
    prompts = synthetic_prompts("arith", 3, 0) + synthetic_prompts("max", 3, 0)

    def sample():
        torch.manual_seed(7)
        return gen.generate(prompts, 4).response_ids

    plain = sample()
    checkpoint_defaults = {"repetition_penalty": 1.5, "top_k": 3,  # Qwen2.5-Instruct ships 1.05 and 20
                           "no_repeat_ngram_size": 1, "min_p": 0.3, "suppress_tokens": [tok.convert_tokens_to_ids("<answer>")]}
    for key, value in checkpoint_defaults.items():
        setattr(model.generation_config, key, value)
        assert torch.equal(sample(), plain), key
    assert model.generation_config.repetition_penalty == 1.5  # the model's own config is left as it was
    # These settings are strong enough to matter: transformers' own defaults do apply them.
    torch.manual_seed(7)
    ids, mask = _pad_left([r for r in gen.encode_prompts(prompts) for _ in range(4)], tok.pad_token_id)
    inherited = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=True,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, ids.shape[1]:]
    assert not torch.equal(inherited, plain[:, :inherited.shape[1]])


def test_recorded_old_logprobs_make_later_domains_off_policy(policy_dir, scorer, tmp_path):
    engine = LocalEngine(config(policy_dir, tmp_path / "run", lr=3e-2, max_grad_norm=None), scorer=scorer)
    engine.cfg.update.mini_batches = 1
    record = engine.step(0)
    order_first, order_second = engine.rule.domain_order(["arith", "max"], 0)
    assert abs(record["update"][order_first]["ratio"] - 1.0) < 1e-4   # on-policy: nothing moved yet
    assert abs(record["update"][order_second]["ratio"] - 1.0) > 1e-3  # the first domain's step moved the policy


def test_cgpo_on_the_language_model_by_hand_with_sample_shares(policy_dir, scorer, tmp_path):
    """Two domains with different answer lengths, SGD: each sub-step is lr * (n_k / N) * grad L_k."""
    engine = LocalEngine(config(policy_dir, tmp_path / "run"), scorer=scorer)
    torch.manual_seed(0)
    roll = engine.generator.generate(synthetic_prompts("arith", 2, 0) + synthetic_prompts("max", 2, 0), 4)
    mb = build_micro_batches(roll, [0.5, -0.5, 1.0, -1.0] * 4, torch.zeros(0), None)
    old = recorded_logprobs(engine.model, mb.input_ids, mb.attention_mask, mb.response_mask.shape[1], 1.0)
    mb.old_logp, mb.ref_logp = old, old - 0.1
    obj = GRPOObjective(GRPOConfig(beta=0.01, loss_agg="token-mean"))
    batches = [DomainBatch("arith", [mb.select(range(0, 8))]), DomainBatch("max", [mb.select(range(8, 16))])]
    assert shares(batches, obj) == {"arith": 0.5, "max": 0.5}
    assert shares(batches, obj, "units")["arith"] != pytest.approx(0.5, abs=0.02)  # token counts differ
    state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    lr, alpha = 0.5, 1.2
    CGPO(alpha=alpha, order="fixed", fixed_order=["max", "arith"]).update(
        engine.model, torch.optim.SGD(engine.model.parameters(), lr=lr), batches, obj, step=0)
    got = params(engine.model)
    engine.model.load_state_dict(state)
    phi0 = params(engine.model)
    for b in (batches[1], batches[0]):
        engine.model.zero_grad()
        agg, _ = obj(engine.model, b.micro_batches[0])
        (agg.total / agg.units).backward()
        with torch.no_grad():
            for p in engine.model.parameters():
                if p.grad is not None:
                    p -= lr * 0.5 * p.grad
    expected = phi0 + alpha * (params(engine.model) - phi0)
    assert (expected - phi0).norm() > 1e-3
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)


def test_response_split_at_first_eos():
    ids, mask, truncated = split_responses(torch.tensor([[5, 6, 0, 7, 0], [5, 6, 7, 8, 9]]), eos_id=0, pad_id=1)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert ids.tolist()[0] == [5, 6, 0, 1, 1] and truncated == [False, True]


def test_omni_thinker_order_follows_the_paper_categories(policy_dir, scorer, tmp_path):
    cfg = config(policy_dir, tmp_path / "run", rule="joint")
    cfg.data.tasks, cfg.data.curriculum, cfg.data.eval_prompts = ["arith", "prog"], "omni_thinker", 0
    assert LocalEngine(cfg, scorer=scorer).sampler.order == ["prog", "arith"]  # categories from score domains
    cfg.data.domain_categories = {"prog": "writing"}
    assert LocalEngine(cfg, scorer=scorer).sampler.order == ["arith", "prog"]


def test_paper_code_preset(policy_dir, scorer, tmp_path):
    cfg = from_dict({"preset": "paper-code"})
    assert (cfg.update.scaling, cfg.update.share_by, cfg.grpo.kl_only_nonzero_advantage) == ("loss", "micro_batches", True)
    assert cfg.to_dict()["preset"] == "paper-code"
    with pytest.raises(ValueError, match="preset 'paper-code' sets update.scaling"):
        from_dict({"preset": "paper-code", "update": {"scaling": "lr"}})
    with pytest.raises(ValueError, match="unknown preset"):
        from_dict({"preset": "paper"})
    path = tmp_path / "c.toml"
    path.write_text(f'[model]\nkind = "tiny"\npath = "{policy_dir}"\n[run]\nout_dir = "{tmp_path / "run"}"\n')
    engine = LocalEngine(load_config(path, ["preset=paper-code"]), scorer=scorer)
    assert isinstance(engine.rule, CGPO) and (engine.rule.scaling, engine.rule.share_by) == ("loss", "micro_batches")
    assert engine.grpo.kl_only_nonzero_advantage


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
    tasks = {"arith": pools["math"], "essay": pools["writing"], "prog": pools["code"]}
    by_category = PhaseSampler(tasks, batch_size=2, total_steps=9,
                               categories={"arith": "math", "essay": "writing", "prog": "code"})
    assert by_category.order == ["prog", "arith", "essay"]  # code first, as the paper orders them
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


@pytest.mark.parametrize("rule", ["gxpo", "cgpo_gxpo"])
def test_gxpo_rules_run_in_the_engine_with_three_backward_passes(policy_dir, scorer, tmp_path, rule):
    cfg = config(policy_dir, tmp_path / "run", rule=rule, gxpo={"virtual_steps": 3, "alpha": 0.5})
    cfg.run.eval_every = cfg.run.plot_every = 0
    engine = LocalEngine(cfg, scorer=scorer)
    objective, update, passes = engine.objective, engine.rule.update, []

    def counted(model, micro_batch):
        passes[-1][0] += 1
        return objective(model, micro_batch)

    def update_counting(model, optimizer, batches, objective_, **kw):
        passes.append([0, sum(len(b.micro_batches) for b in batches)])
        return update(model, optimizer, batches, objective_, **kw)

    engine.objective = type("Counted", (), {"units": objective.units, "samples": objective.samples,
                                            "__call__": staticmethod(counted)})()
    engine.rule.update = update_counting
    before = params(engine.model)
    records = engine.train()
    engine.close()
    after = params(engine.model)
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert len(passes) == 4 and all(calls == 3 * micro for calls, micro in passes)  # measured, not reported
    for r in records:
        metrics = r["update"]["_all"] if rule == "gxpo" else r["update"]["arith"]
        assert metrics["backward_passes"] == 3 and metrics["gxpo_active"] == 1
        assert 0 < metrics["gxpo_active_fraction"] <= 1 and metrics["gxpo_extrapolated_norm"] > 0
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["rule"]
    gates = [state["gate"]] if rule == "gxpo" else list(state["gates"].values())
    assert gates and all(g["updates"] == 4 and g["tripped_at"] is None for g in gates)
