"""CAPO: the per-token curvature predictions against autograd and torch's Adam, the masking rule by hand,
the masked-fraction cap, composition with the domain rules, and a run through the engine."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")

from trainers.capo import AdamRowModel, CAPOSettings, curvature_mask, lm_head, token_curvature, vocabulary_rows
from trainers.config import from_dict
from trainers.engine import LocalEngine
from trainers.grpo import GRPOConfig
from trainers.rollout import GRPOObjective, MicroBatch, recorded_logprobs
from trainers.tiny import build_tiny_policy
from trainers.updates import DomainBatch, make_rule

from mdreward import Scorer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared machine
    yield
    torch.set_num_threads(threads)


# ---- the per-token predictions -------------------------------------------------------------------
def _expected(w, h, action, adv, lr, temperature, direction):
    """gain and kl for the step ``W + lr * direction`` from autograd: f(W) = A log softmax(W h / T)[a]."""
    w = w.clone().requires_grad_(True)
    logp = torch.log_softmax(w @ h / temperature, -1)[action]
    (grad_logp,) = torch.autograd.grad(logp, w, create_graph=True)
    (hvp,) = torch.autograd.grad((grad_logp * direction).sum(), w)     # (grad^2 log pi_a) d
    s = float((grad_logp * direction).sum().detach())
    curvature = adv * (s * s + float((hvp * direction).sum()))          # d^T A (score score^T + grad^2 log pi) d
    gain = lr * float((adv * grad_logp * direction).sum().detach()) + 0.5 * lr * lr * curvature
    return gain, 0.5 * lr * lr * s * s, (adv * grad_logp).detach()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sgd_predictions_match_autograd(temperature):
    torch.manual_seed(0)
    vocab, hidden, lr = 6, 4, 0.3
    w = torch.randn(vocab, hidden, dtype=torch.float64)
    for _ in range(4):
        h, action, adv = torch.randn(hidden, dtype=torch.float64), int(torch.randint(vocab, ())), float(torch.randn(()))
        _, _, grad = _expected(w, h, action, adv, lr, temperature, torch.zeros_like(w))
        gain, kl, _ = _expected(w, h, action, adv, lr, temperature, grad)   # SGD: d = g
        got = token_curvature((h / temperature)[None], (w @ h / temperature)[None], torch.tensor([action]),
                              torch.tensor([adv]), lr, CAPOSettings(top_k=None, optimizer_model="sgd"), None)
        assert float(got.gain[0]) == pytest.approx(gain, rel=1e-9, abs=1e-12)
        assert float(got.kl[0]) == pytest.approx(kl, rel=1e-9, abs=1e-12)


def test_adam_direction_is_torch_adams_step_and_predictions_match_autograd():
    """The direction CAPO predicts with is the displacement torch's Adam takes from the same moments."""
    torch.manual_seed(1)
    vocab, hidden, lr, betas, eps, t = 5, 3, 0.05, (0.9, 0.99), 1e-8, 3
    w = torch.randn(vocab, hidden, dtype=torch.float64)
    h, action, adv = torch.randn(hidden, dtype=torch.float64), 2, -1.3
    model = AdamRowModel(betas=betas, eps=eps, t=t)
    model.m = torch.randn(vocab, hidden, dtype=torch.float64) * 0.1
    model.v = torch.rand(vocab, hidden, dtype=torch.float64) * 0.01
    _, _, grad = _expected(w, h, action, adv, lr, 1.0, torch.zeros_like(w))
    param = torch.nn.Parameter(w.clone())
    opt = torch.optim.Adam([param], lr=lr, betas=betas, eps=eps)
    # torch minimises: its gradient is -g, so its first moment is -m
    opt.state[param] = {"step": torch.tensor(float(t)), "exp_avg": -model.m.clone(), "exp_avg_sq": model.v.clone()}
    param.grad = -grad
    opt.step()
    direction = (param.detach() - w) / lr
    gain, kl, _ = _expected(w, h, action, adv, lr, 1.0, direction)
    got = token_curvature(h[None], (w @ h)[None], torch.tensor([action]), torch.tensor([adv]), lr,
                          CAPOSettings(top_k=None), model)
    assert float(got.gain[0]) == pytest.approx(gain, rel=1e-7)
    assert float(got.kl[0]) == pytest.approx(kl, rel=1e-7)


def test_top_k_rows_keep_the_sampled_token_and_renormalise():
    logits = torch.tensor([[5.0, 4.0, 3.0, -9.0], [0.0, 1.0, 2.0, 3.0]])
    rows = vocabulary_rows(logits, torch.tensor([3, 2]), top_k=2)
    assert rows.tolist() == [[0, 3], [3, 2]]                      # token 3 replaces the 2nd best in row 0
    assert vocabulary_rows(logits, torch.tensor([0, 0]), None).tolist() == [[0, 1, 2, 3]] * 2
    # predictions on k rows = the full computation on a vocabulary of just those rows
    torch.manual_seed(2)
    w, h = torch.randn(6, 3, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    z = h @ w.T
    action = torch.tensor([int(z.argmin())])
    settings = CAPOSettings(top_k=3, optimizer_model="sgd")
    got = token_curvature(h, z, action, torch.tensor([0.8]), 0.2, settings, None)
    sub = vocabulary_rows(z, action, 3)[0]
    ref = token_curvature(h, z[:, sub], torch.tensor([int((sub == action).nonzero())]), torch.tensor([0.8]), 0.2,
                          CAPOSettings(top_k=None, optimizer_model="sgd"), None)
    assert torch.allclose(got.gain, ref.gain) and torch.allclose(got.kl, ref.kl)


def test_zero_advantage_tokens_predict_no_change():
    got = token_curvature(torch.randn(3, 4), torch.randn(3, 9), torch.tensor([1, 2, 3]), torch.zeros(3), 1.0,
                          CAPOSettings(top_k=None, optimizer_model="sgd"), None)
    assert torch.equal(got.gain, torch.zeros(3)) and torch.equal(got.kl, torch.zeros(3))


# ---- the masking rule ----------------------------------------------------------------------------
def test_mask_rule_by_hand():
    gain = torch.tensor([0.0, 0.005, -0.005, 0.02, -0.02, 0.005, 0.01])
    kl = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 2e-4, 0.0])
    sym = curvature_mask(gain, kl, CAPOSettings(fisher_tau=1e-4, hessian_tau=0.01))
    assert sym.masked.tolist() == [False, False, False, True, True, True, True]   # |gain| >= tau at the edge too
    assert sym.fisher.tolist() == [False] * 5 + [True, False]
    one_sided = curvature_mask(gain, kl, CAPOSettings(fisher_tau=1e-4, hessian_tau=0.01, symmetric=False))
    assert one_sided.masked.tolist() == [False, False, True, True, True, True, True]  # a predicted loss is masked
    fisher_only = curvature_mask(gain, kl, CAPOSettings(fisher_tau=1e-4, hessian_tau=0))
    assert fisher_only.masked.tolist() == [False] * 5 + [True, False]
    assert not curvature_mask(gain, kl, CAPOSettings(fisher_tau=None, hessian_tau=None)).masked.any()


def test_cap_keeps_the_worst_tokens_masked_and_bounds_the_fraction():
    torch.manual_seed(3)
    gain = torch.randn(200) * 0.02
    kl = torch.rand(200) * 3e-4
    settings = CAPOSettings(fisher_tau=1e-4, hessian_tau=0.01, max_masked_fraction=0.08)
    uncapped = curvature_mask(gain, kl, CAPOSettings(fisher_tau=1e-4, hessian_tau=0.01)).masked
    capped = curvature_mask(gain, kl, settings).masked
    assert int(uncapped.sum()) > 16 and int(capped.sum()) == 16         # floor(0.08 * 200)
    assert bool((capped <= uncapped).all())
    score = torch.maximum(kl / 1e-4, gain.abs() / 0.01)
    assert float(score[capped].min()) >= float(score[uncapped & ~capped].max())
    few = curvature_mask(gain[:5] * 0, kl[:5] * 0, settings).masked     # under the cap: the rule alone decides
    assert not few.any()


@pytest.mark.parametrize("bad", [dict(fisher_tau=-1.0), dict(hessian_tau=math.nan), dict(optimizer_model="lion"),
                                 dict(top_k=0), dict(max_masked_fraction=1.5)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        CAPOSettings(**bad)


def test_adam_row_model_steps_the_rows_it_saw_with_their_mean_gradient():
    model = AdamRowModel(betas=(0.5, 0.75))
    model.ensure(torch.Size([4, 2]), torch.device("cpu"))
    curv = token_curvature(torch.tensor([[1.0, 2.0], [3.0, -1.0]]), torch.zeros(2, 4), torch.tensor([0, 1]),
                           torch.tensor([1.0, -2.0]), 0.1, CAPOSettings(top_k=2, optimizer_model="sgd"), None)
    model.accumulate(curv, torch.tensor([0, 1]), chunk=1)
    model.commit()
    rows = curv.rows.reshape(-1).tolist()
    grads = curv.gradients(slice(None)).reshape(-1, 2)
    for r in range(4):
        hits = [i for i, x in enumerate(rows) if x == r]
        mean = grads[hits].mean(0) if hits else torch.zeros(2)
        assert torch.allclose(model.m[r], 0.5 * mean) and torch.allclose(model.v[r], 0.25 * mean * mean)
    assert model.t == 1


# ---- the rule on a real (tiny) language model ----------------------------------------------------
def _lm_batches(seed=0, vocab=97, domains=2, n=4, p_len=5, r_len=8):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                         tie_word_embeddings=True))
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for d in range(domains):
        ids = torch.randint(0, vocab, (n, p_len + r_len), generator=gen)
        attn = torch.ones_like(ids)
        resp = torch.ones(n, r_len, dtype=torch.long)
        resp[0, r_len // 2:] = 0
        attn[0, p_len + r_len // 2:] = 0
        old = recorded_logprobs(model, ids, attn, r_len, 1.0)
        adv = torch.randn(n, generator=gen).sign() * (0.5 + torch.rand(n, generator=gen))  # no zero advantage
        mb = MicroBatch(ids, attn, resp, old, None, adv)
        batches.append(DomainBatch(f"d{d}", [mb.select([0, 1]), mb.select([2, 3])]))
    return model, batches


def _run(rule, seed=0, **opt):
    model, batches = _lm_batches(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=opt.pop("lr", 1e-3), weight_decay=0.0)
    result = rule.update(model, opt, batches, GRPOObjective(GRPOConfig(beta=0.0)), step=0)
    return model, result


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("inner, options", [("joint", {}), ("cgpo", {"alpha": 1.2})])
def test_capo_with_thresholds_off_is_the_inner_rule(inner, options):
    plain, _ = _run(make_rule(inner, **options))
    capo, result = _run(make_rule("capo", inner=inner, inner_options=options, fisher_tau=0, hessian_tau=0))
    assert torch.equal(_flat(plain), _flat(capo))
    assert result.extra["capo_masked_fraction"] == 0.0


def test_every_token_masked_means_no_gradient_and_the_cap_bounds_the_fraction():
    base, _ = _lm_batches()
    start = _flat(base)
    rule = make_rule("capo", inner="cgpo", inner_options={"alpha": 1.0}, fisher_tau=1e-30, hessian_tau=1e-30)
    frozen, result = _run(rule)
    assert result.extra["capo_masked_fraction"] == 1.0
    assert rule.adam.t == 1 and not rule.adam.m.any()                    # a model step with no kept gradient
    assert {d: m["capo_masked_fraction"] for d, m in result.domains.items()} == {"d0": 1.0, "d1": 1.0}
    assert torch.equal(_flat(frozen), start)                              # no kept token: no step moved anything
    capped, result = _run(make_rule("capo", inner="cgpo", inner_options={"alpha": 1.0}, fisher_tau=1e-30,
                                    hessian_tau=1e-30, max_masked_fraction=0.08))
    assert 0 < result.extra["capo_masked_fraction"] <= 0.08
    assert all(0 < m["capo_masked_fraction"] <= 0.08 for m in result.domains.values())
    assert not torch.equal(_flat(capped), start)


def test_mask_uses_the_models_final_hidden_states_and_logits():
    """The hooked LM-head input and output are the model's last hidden states and logits: recompute the
    predictions from ``output_hidden_states`` and compare the rule's mask with the one they give."""
    model, batches = _lm_batches(seed=4)
    mb = batches[0].micro_batches[0]
    r_len, real = mb.response_mask.shape[1], mb.response_mask.bool()
    with torch.no_grad():
        out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, output_hidden_states=True)
    settings = CAPOSettings(optimizer_model="sgd", top_k=None)
    curv = token_curvature(out.hidden_states[-1][:, -r_len - 1:-1][real], out.logits[:, -r_len - 1:-1][real],
                           mb.input_ids[:, -r_len:][real], mb.advantages.unsqueeze(-1).expand_as(real)[real], 1e-2,
                           settings, None)
    tau = float(curv.gain.abs().median())                                # half the tokens break the band
    rule = make_rule("capo", fisher_tau=0, hessian_tau=tau, optimizer_model="sgd", top_k=None)
    expected = curvature_mask(curv.gain, curv.kl, rule.settings).masked
    assert 0 < int(expected.sum()) < int(real.sum())
    keep = rule.keep_mask(out.hidden_states[-1], out.logits, mb, 1e-2, 1.0, "d0")
    assert keep[real].bool().tolist() == (~expected).tolist() and not keep[~real].any()
    # the rule's own forward (through the LM-head hook) masks the same tokens
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    rule.update(model, opt, [DomainBatch("d0", [mb])], GRPOObjective(GRPOConfig(beta=0.0)), step=0)
    assert rule._counts["d0"][:2] == [float(real.sum()), float(expected.sum())]


def test_rule_refuses_a_model_without_lm_head_and_a_foreign_objective():
    with pytest.raises(TypeError, match="LM head"):
        lm_head(torch.nn.Linear(2, 2))
    model, batches = _lm_batches()
    with pytest.raises(TypeError, match="GRPOObjective"):
        make_rule("capo").update(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, object(), step=0)
    with pytest.raises(ValueError, match="inner"):
        make_rule("capo", inner="capo")


# ---- through the engine ----------------------------------------------------------------------------
def test_engine_builds_capo_around_the_configured_rule_with_its_options():
    fake = SimpleNamespace(cfg=from_dict({"update": {"rule": "capo", "capo_inner": "cgpo", "alpha": 0.7,
                                                     "capo_hessian_tau": 0.5, "capo_top_k": 8}}))
    fake._make_rule = lambda: LocalEngine._make_rule(fake)
    fake._capo_rule = lambda: LocalEngine._capo_rule(fake)
    rule = LocalEngine._make_rule(fake)
    assert (rule.name, rule.rule.name, rule.rule.alpha) == ("capo", "cgpo", 0.7)
    assert (rule.settings.hessian_tau, rule.settings.top_k, rule.settings.fisher_tau) == (0.5, 8, 1e-4)
    assert fake.cfg.update.rule == "capo"                                 # the config is left as it was
    fake.cfg.update.capo_inner = "capo"
    with pytest.raises(ValueError, match="capo_inner"):
        LocalEngine._make_rule(fake)


def test_engine_runs_cgpo_with_capo_masking_and_resumes(tmp_path):
    # 60 warm-start steps: responses vary in format and answer, so advantages are not all zero
    policy = build_tiny_policy(tmp_path / "policy", sft_steps=60, lr=1e-2, batch_size=32, log_every=0)
    cfg = {"model": {"kind": "tiny", "path": str(policy)},
           "data": {"tasks": ["arith", "max"], "prompts_per_domain": 2, "eval_prompts": 2, "pool_size": 16},
           "rollout": {"group_size": 4, "max_new_tokens": 12},
           "update": {"rule": "capo", "capo_inner": "cgpo", "lr": 1e-3, "mini_batches": 2, "micro_batch_size": 4,
                      "capo_fisher_tau": 1e-7, "capo_hessian_tau": 1e-4, "capo_max_masked_fraction": 0.08},
           "run": {"steps": 2, "out_dir": str(tmp_path / "run"), "eval_every": 0, "checkpoint_every": 1,
                   "plot_every": 0, "tensorboard": False}}
    with Scorer() as scorer:
        engine = LocalEngine(from_dict(cfg), scorer=scorer)
        records = engine.train()
        assert engine.rule.name == "capo" and engine.rule.rule.name == "cgpo"
        assert engine.rule.adam.t == 4                                     # one optimizer-model step per mini-batch
        for record in records:
            fractions = [m["capo_masked_fraction"] for d, m in record["update"].items() if d != "_all"]
            assert len(fractions) == 2 and all(0 <= f <= 0.08 for f in fractions)
            assert 0 <= record["update"]["_all"]["capo_masked_fraction"] <= 0.08
        assert any(record["update"]["_all"]["capo_masked_fraction"] > 0 for record in records)
        resumed = LocalEngine(from_dict(cfg), scorer=scorer, resume=True)
        assert resumed.rule.adam.t == 4 and torch.equal(resumed.rule.adam.m, engine.rule.adam.m)
        engine.close()
        resumed.close()
