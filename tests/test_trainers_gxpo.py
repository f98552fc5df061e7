"""GXPO (trainers/gxpo.py) against the paper's Algorithm 1 and Corollary 2, in float64 without a language model."""
from __future__ import annotations

import copy

import pytest
import torch

from trainers.grpo import Aggregate
from trainers.gxpo import CGPOGXPO, FAMOGXPO, GXPO, GXPOSettings, extrapolation_scale, geometric_sum
from trainers.updates import DomainBatch, make_rule

from test_trainers_core import MSEObjective as MSE  # tests/ is on sys.path under pytest

F64 = torch.float64


class Theta(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.as_tensor(values, dtype=torch.float64).clone())


class DiagQuad:
    """L(theta) = spike * 0.5 * sum_i h_i theta_i^2 (the micro-batch is h); records theta at every call."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []
        self.spike = 1.0

    def units(self, mb) -> float:
        return 1.0

    def samples(self, mb) -> int:
        return 1

    def __call__(self, model, h):
        self.seen.append(model.theta.detach().clone())
        return Aggregate(self.spike * 0.5 * (h * model.theta ** 2).sum(), 1.0), {}


def quad_batch(h) -> list[DomainBatch]:
    return [DomainBatch("q", [torch.as_tensor(h, dtype=torch.float64)])]


H = torch.tensor([0.5, 1.0, 2.0, 3.5, 5.0, 7.0, 9.0, 10.0], dtype=F64)
ETA = 0.1  # eta * h_i <= 1 for every i, as Corollary 2 assumes


@pytest.mark.parametrize("stabilize", [False, True])
@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_corollary2_one_step_equals_k_plus_1_gradient_steps(k, stabilize):
    """Diagonal quadratic, plain SGD, alpha = 1, every nonzero-gradient coordinate active."""
    theta0 = torch.linspace(-2.0, 3.0, len(H), dtype=F64)
    model, obj = Theta(theta0), DiagQuad()
    rule = make_rule("gxpo", virtual_steps=k, alpha=1.0, delta=0.0, stabilize=stabilize)
    result = rule.update(model, torch.optim.SGD(model.parameters(), lr=ETA), quad_batch(H), obj, step=0)
    expected = theta0 * (1 - ETA * H) ** (k + 1)
    assert torch.allclose(model.theta.detach(), expected, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(expected, theta0 * (1 - ETA * H) ** k)  # K steps or K+1 steps are told apart
    assert len(obj.seen) == 3 and result.extra["backward_passes"] == 3
    # the corrective gradient was taken at the exact K-step GD point
    assert torch.allclose(obj.seen[2], theta0 * (1 - ETA * H) ** k, rtol=1e-12, atol=1e-14)
    assert result.extra["gxpo_active_fraction"] == 1.0


def test_inactive_coordinates_keep_the_observed_displacement():
    """|g0_i| <= delta: scale 1, so theta~_i = theta0_i + alpha (theta2_i - theta0_i); active ones are scaled."""
    theta0 = torch.tensor([1.0, -1.0, 2.0, 1.0, 1e-3, -2e-3], dtype=F64)
    h = torch.tensor([1.0, 2.0, 3.0, 4.0, 1.0, 2.0], dtype=F64)     # |g0| = h |theta0|: the last two are below delta
    delta, alpha, k = 0.01, 0.5, 5
    model, obj = Theta(theta0), DiagQuad()
    rule = GXPO(virtual_steps=k, alpha=alpha, delta=delta)
    result = rule.update(model, torch.optim.SGD(model.parameters(), lr=ETA), quad_batch(h), obj, step=0)
    r = 1 - ETA * h
    theta2 = theta0 * r ** 2
    active = (h * theta0).abs() > delta
    assert active.tolist() == [True] * 4 + [False] * 2
    scale_if_active = geometric_sum(r, k) / geometric_sum(r, 2)
    expected_tilde = theta0 + alpha * torch.where(active, scale_if_active, torch.ones_like(r)) * (theta2 - theta0)
    assert torch.allclose(obj.seen[2], expected_tilde, rtol=1e-12, atol=1e-15)
    # not vacuous: had they been active, the inactive coordinates would have landed elsewhere
    as_if_active = theta0 + alpha * scale_if_active * (theta2 - theta0)
    assert ((as_if_active - expected_tilde)[~active].abs() > 1e-5).all()
    assert torch.allclose(model.theta.detach(), expected_tilde * r, rtol=1e-12, atol=1e-15)
    assert result.extra["gxpo_active_fraction"] == pytest.approx(4 / 6)
    displacement = (theta2 - theta0)
    assert result.extra["gxpo_observed_norm"] == pytest.approx(float(displacement.norm()))
    extrapolated = torch.where(active, scale_if_active, torch.ones_like(r)) * displacement
    assert result.extra["gxpo_extrapolated_norm"] == pytest.approx(float(extrapolated.norm()))


def test_stabilizers_clamp_the_ratio_and_the_scale():
    g0 = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0], dtype=F64)
    g1 = torch.tensor([0.5, 10.0, -5.0, -1.0, 1.0, 3.0], dtype=F64)
    clean = GXPOSettings(virtual_steps=5, stabilize=False)
    scale, active, _ = extrapolation_scale(g0, g1, clean)
    assert scale[0] == pytest.approx((1 + 0.5 + 0.25 + 0.125 + 0.0625) / 1.5)
    assert scale[1] == pytest.approx(11111 / 11) and scale[2] == pytest.approx(521 / -4)  # unbounded, any sign
    assert scale[3] == 1.0 and scale[4] == pytest.approx(5 / 2)  # S_2 = 0 at r = -1: observed displacement
    assert active.tolist() == [True] * 5 + [False] and scale[5] == 1.0
    scale, _, clamped = extrapolation_scale(g0, g1, GXPOSettings(virtual_steps=5))
    assert clamped.tolist() == [False, True, True, False, False, False]
    assert float(scale.max()) <= 5 / 2 + 1 and float(scale.min()) >= 1.0
    assert scale[1] == 3.5 and scale[2] == 1.0                # r -> 3: 121/4 -> 3.5; r -> -2: -11 -> 1
    assert scale[0] == pytest.approx(1.9375 / 1.5) and scale[4] == pytest.approx(5 / 2)


def test_gate_trips_on_a_norm_spike_and_never_untrips():
    theta0 = torch.linspace(1.0, 2.0, len(H), dtype=F64)
    model, obj = Theta(theta0), DiagQuad()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rule = GXPO(window=5, tau=0.5)                           # warmup = a full window
    batch = quad_batch(H)

    def run(n):
        out = []
        for _ in range(n):
            before = len(obj.seen)
            res = rule.update(model, opt, batch, obj, step=0)
            out.append((len(obj.seen) - before, res.extra))
        return out

    obj.spike = 50.0
    first = run(1)                                          # a spike during warm-up is only buffered
    obj.spike = 1.0
    steady = run(9)                                         # shrinking norms: Z < 0, never >= tau
    assert [passes for passes, _ in first + steady] == [3] * 10
    assert all(e["gxpo_gate_tripped"] == 0 for _, e in first + steady)
    assert all(e["gxpo_z"] < 0 for _, e in steady[5:])
    obj.spike = 10.0
    (passes, spiked), = run(1)
    assert passes == 3 and spiked["gxpo_z"] >= 0.5 and spiked["gxpo_gate_tripped"] == 1
    obj.spike = 1.0
    after = []
    for _ in range(12):                                     # plain single-pass steps from now on
        theta = model.theta.detach().clone()
        (passes, extra), = run(1)
        after.append(passes)
        assert extra["gxpo_active"] == 0 and extra["gxpo_gate_tripped"] == 1
        assert torch.allclose(model.theta.detach(), theta * (1 - 0.01 * H), rtol=1e-13)
    assert after == [1] * 12
    resumed = GXPO(window=5, tau=0.5)
    resumed.load_state_dict(copy.deepcopy(rule.state_dict()))
    before = len(obj.seen)
    resumed.update(model, opt, batch, obj, step=0)
    assert len(obj.seen) - before == 1                      # the trip survives a checkpoint


def test_algorithm1_literal_warmup_scores_from_the_second_norm():
    model, obj = Theta(torch.ones(len(H), dtype=F64)), DiagQuad()
    rule = GXPO(window=30, warmup=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    zs = [rule.update(model, opt, quad_batch(H), obj, step=s).extra["gxpo_z"] for s in range(3)]
    assert zs[0] != zs[0] and zs[1] != zs[1] and zs[2] == zs[2]  # nan, nan, then a score


@pytest.mark.parametrize("fast_state", ["advance", "restore"])
def test_adam_state_during_the_fast_steps(fast_state):
    """advance (the paper): three Adam steps per update; restore: the state sees only g_slow."""
    model = Theta(torch.linspace(-1.0, 1.0, len(H), dtype=F64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    GXPO(fast_state=fast_state).update(model, opt, quad_batch(H), DiagQuad(), step=0)
    state = opt.state[model.theta]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    one_gradient = torch.allclose(v, 0.001 * (m / 0.1) ** 2, rtol=1e-10)
    if fast_state == "restore":
        assert float(state["step"]) == 1 and one_gradient
    else:
        assert float(state["step"]) == 3 and not one_gradient


# ---- composition with CGPO -----------------------------------------------------------------------
class CountingMSE(MSE):
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, mb):
        self.calls += 1
        return super().__call__(model, mb)


def net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def domain(k, n):
    gen = torch.Generator().manual_seed(100 + k)
    x, y = torch.randn(n, 4, generator=gen, dtype=F64), torch.randn(n, 1, generator=gen, dtype=F64) + k
    return DomainBatch(f"d{k}", [(x[i:i + 2], y[i:i + 2]) for i in range(0, n, 2)])


def test_cgpo_with_one_domain_and_alpha_1_is_plain_gxpo():
    batches = [domain(0, 6)]
    options = dict(virtual_steps=3, alpha=0.7, window=2)
    a, b = net(), net()
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
    plain = GXPO(max_grad_norm=0.5, **options)
    composed = make_rule("cgpo_gxpo", alpha=1.0, max_grad_norm=0.5, gxpo=options)
    for step in range(4):
        plain.update(a, opt_a, batches, MSE(), step=step)
        composed.update(b, opt_b, batches, MSE(), step=step)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt_a.state[p]["exp_avg_sq"], opt_b.state[q]["exp_avg_sq"])
    assert composed.state_dict()["gates"]["d0"] == plain.state_dict()["gate"]


def test_cgpo_gxpo_by_hand_under_sgd_two_domains():
    """phi_k = GXPO step on domain sigma(k) with lr * share; theta = phi0 + alpha (phi_K - phi0)."""
    batches = [domain(0, 2), domain(1, 6)]                    # sample shares 1/4, 3/4
    options = dict(virtual_steps=4, alpha=0.6)
    model = net()
    CGPOGXPO(alpha=1.2, order="fixed", fixed_order=["d1", "d0"], gxpo=options).update(
        model, torch.optim.SGD(model.parameters(), lr=0.05), batches, MSE(), step=0)
    manual = net()
    phi0 = [p.detach().clone() for p in manual.parameters()]
    for batch, share in ((batches[1], 0.75), (batches[0], 0.25)):
        GXPO(**options).update(manual, torch.optim.SGD(manual.parameters(), lr=0.05 * share), [batch], MSE(), step=0)
    with torch.no_grad():
        for p, p0 in zip(manual.parameters(), phi0):
            p.copy_(p0 + 1.2 * (p - p0))
    for p, q in zip(model.parameters(), manual.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)


def test_famo_gxpo_is_gxpo_on_famos_weighted_loss():
    """Equal sample counts: GXPO with domain weights a_k minimises sum_k a_k L_k, FAMO's loss."""
    batches = [domain(0, 4), domain(1, 4)]
    batches[0].mean_reward, batches[1].mean_reward = 0.5, -0.5   # FAMO weights ~ 1/q: 0.75 / 0.25
    options = dict(virtual_steps=3, alpha=0.8)
    famo = FAMOGXPO(gxpo=options)
    famo.observe(0, batches)
    weights = famo.loss_weights(["d0", "d1"])
    assert weights["d0"] == pytest.approx(0.75, abs=1e-3)
    a, b, counting = net(), net(), CountingMSE()
    result = famo.update(a, torch.optim.SGD(a.parameters(), lr=0.05), batches, counting, step=0)
    GXPO(domain_weights=weights, **options).update(b, torch.optim.SGD(b.parameters(), lr=0.05), batches, MSE(), step=0)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)
    assert counting.calls == 3 * 4 and result.domains["d0"]["famo_weight"] == weights["d0"]
    assert FAMOGXPO(gxpo=options).state_dict()["gate"]["updates"] == 0 and famo.state_dict()["gate"]["updates"] == 1


def test_gxpo_state_survives_a_checkpoint_exactly():
    batches = [domain(0, 4), domain(1, 4)]
    straight, resumed = net(), net()
    rule = GXPO(window=2, tau=5.0)
    opt = torch.optim.SGD(straight.parameters(), lr=0.05)
    for step in range(6):
        rule.update(straight, opt, batches, MSE(), step=step)
    first = GXPO(window=2, tau=5.0)
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.05)
    for step in range(3):
        first.update(resumed, opt2, batches, MSE(), step=step)
    second = GXPO(window=2, tau=5.0)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for step in range(3, 6):
        second.update(resumed, opt2, batches, MSE(), step=step)
    assert second.state_dict() == rule.state_dict()
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_bad_options_fail_with_the_option_named():
    with pytest.raises(ValueError, match="virtual_steps"):
        GXPO(virtual_steps=1)
    with pytest.raises(ValueError, match=r"unknown GXPO option\(s\) \['k'\]"):
        make_rule("cgpo_gxpo", gxpo={"k": 3})
    with pytest.raises(ValueError, match="fast_state"):
        GXPO(fast_state="reset")


def test_gxpo_options_are_refused_where_no_rule_reads_them_or_not_a_table():
    """``update.gxpo`` with a rule that ignores it (e.g. a comparison's shared --set) or written as TOML
    inline text on the command line (a string) is an error naming the field, not silently dropped."""
    from trainers.config import from_dict, load_config

    with pytest.raises(ValueError, match=r"gxpo options \['alpha'\] are set but rule 'cgpo'"):
        from_dict({"update": {"rule": "cgpo", "gxpo": {"alpha": 0.3}}})
    with pytest.raises(ValueError, match="rule 'capo' does not use them"):
        from_dict({"update": {"rule": "capo", "capo_inner": "joint", "gxpo": {"alpha": 0.3}}})
    with pytest.raises(ValueError, match=r"gxpo must be a table"):
        load_config("trainers/configs/tiny_cgpo.toml", ["update.rule=gxpo", "update.gxpo={alpha=0.3}"])
    for rule, inner in (("gxpo", "joint"), ("cgpo_gxpo", "joint"), ("famo_gxpo", "joint"), ("capo", "cgpo_gxpo")):
        cfg = from_dict({"update": {"rule": rule, "capo_inner": inner, "gxpo": {"alpha": 0.3}}})
        assert cfg.update.gxpo == {"alpha": 0.3}


def test_capo_options_are_refused_without_the_capo_rule():
    from trainers.config import from_dict

    with pytest.raises(ValueError, match=r"\['capo_fisher_tau'\] are set but rule 'joint' is not capo"):
        from_dict({"update": {"rule": "joint", "capo_fisher_tau": 0.0}})
    cfg = from_dict({"update": {"rule": "capo", "capo_fisher_tau": 0.0, "capo_inner": "cgpo"}})
    assert cfg.update.capo_fisher_tau == 0.0
    assert from_dict({"update": {"rule": "joint", "capo_top_k": 50}}).update.rule == "joint"  # the default: fine
