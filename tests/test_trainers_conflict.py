"""Module grouping, the per-module inter-domain gradient conflict diagnostic, and MGS (modular gradient
surgery): on hand-built gradients, a tiny Qwen2, and through the engine."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from trainers.conflict import ModuleLayout, RunningCosines, group_names, measure_conflicts, module_conflicts, prompt_halves
from trainers.grpo import Aggregate, GRPOConfig
from trainers.mgs import MGS
from trainers.rollout import GRPOObjective, MicroBatch
from trainers.updates import DomainBatch, Joint, PCGrad, make_rule

QWEN2_LAYER = ["self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
               "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
               "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]
QWEN2 = (["model.embed_tokens.weight"] + [f"model.layers.{i}.{n}" for i in range(2) for n in QWEN2_LAYER]
         + ["model.norm.weight", "lm_head.weight"])


def test_layer_grouping_of_qwen2_names():
    groups = group_names(QWEN2, "layer")
    assert list(groups) == ["embed", "layer0.attn", "layer0.mlp", "layer0.norm", "layer1.attn", "layer1.mlp",
                            "layer1.norm", "final_norm", "lm_head"]
    assert groups["layer1.attn"] == [f"model.layers.1.{n}" for n in QWEN2_LAYER[:7]]
    assert groups["layer0.mlp"] == [f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    assert groups["layer0.norm"] == ["model.layers.0.input_layernorm.weight",
                                     "model.layers.0.post_attention_layernorm.weight"]
    assert sorted(n for ns in groups.values() for n in ns) == sorted(QWEN2)


def test_other_architectures_and_granularities():
    qwen3_qk_norm = "model.layers.3.self_attn.q_norm.weight"
    gpt2 = ["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight",
            "transformer.h.0.ln_1.weight", "transformer.ln_f.bias", "score.weight"]
    groups = group_names([qwen3_qk_norm, *gpt2], "layer")
    assert groups == {"layer3.norm": [qwen3_qk_norm], "embed": ["transformer.wte.weight"],
                      "layer0.attn": ["transformer.h.0.attn.c_attn.weight"],
                      "layer0.mlp": ["transformer.h.0.mlp.c_fc.weight"], "layer0.norm": ["transformer.h.0.ln_1.weight"],
                      "final_norm": ["transformer.ln_f.bias"], "other": ["score.weight"]}
    by_type = group_names(QWEN2, "type")
    assert list(by_type) == ["embed", "attn", "mlp", "norm", "lm_head"]
    assert len(by_type["attn"]) == 14 and len(by_type["norm"]) == 5  # 2 per layer + the final norm
    assert group_names(QWEN2, "parameter") == {n: [n] for n in QWEN2}
    assert group_names(QWEN2, "model") == {"model": QWEN2}
    # a DDP-style prefix changes nothing
    assert list(group_names(["module." + n for n in QWEN2], "layer")) == list(group_names(QWEN2, "layer"))


def test_user_groupings_patterns_and_callables():
    groups = group_names(QWEN2, {"attn_qk": ["*.q_proj.*", "*.k_proj.*"], "mlp": ["*.mlp.*"]})
    assert list(groups) == ["other", "attn_qk", "mlp"]
    assert len(groups["attn_qk"]) == 8 and len(groups["mlp"]) == 6
    # first group in mapping order wins
    first = group_names(QWEN2, {"everything_in_layer0": ["model.layers.0.*"], "mlp": ["*.mlp.*"]})
    assert len(first["everything_in_layer0"]) == 12 and len(first["mlp"]) == 3
    with pytest.raises(ValueError, match="match no parameter.*mlp_typo"):
        group_names(QWEN2, {"mlp": ["*.mlp.*"], "mlp_typo": ["*.mpl.*"]})
    with pytest.raises(ValueError, match="list of name patterns"):
        group_names(QWEN2, {"mlp": "*.mlp.*"})
    with pytest.raises(ValueError, match="module grouping must be one of"):
        group_names(QWEN2, "layers")
    by_depth = group_names(QWEN2, lambda n: "low" if ".layers.0." in n else ("high" if ".layers." in n else None))
    assert list(by_depth) == ["other", "low", "high"] and len(by_depth["other"]) == 3
    with pytest.raises(ValueError, match="expected a group name"):
        group_names(QWEN2, lambda n: 3)


def hand_layout():
    """Parameters a (2 values) in module attn, b (3 values) in mlp, c (1 value) in norm; given in order c, a, b."""
    named = [("blk.norm.w", torch.zeros(1)), ("blk.self_attn.a", torch.zeros(2)), ("blk.mlp.b", torch.zeros(3))]
    return ModuleLayout.build(named, "type")


def test_layout_orders_parameters_module_by_module():
    layout = hand_layout()
    assert layout.modules == [("norm", 0, 1), ("attn", 1, 3), ("mlp", 3, 6)]
    assert layout.names == ["blk.norm.w", "blk.self_attn.a", "blk.mlp.b"]
    one = ModuleLayout.build([("z", torch.zeros(2)), ("a", torch.zeros(1))], "model")
    assert one.names == ["z", "a"] and one.modules == [("model", 0, 3)]  # a single module keeps the given order


def test_per_module_cosines_and_conflicts_by_hand():
    layout = hand_layout()
    # flat layout order: norm | attn (2) | mlp (3)
    g = torch.tensor([[1.0, 1.0, 0.0, 1.0, 2.0, 0.0],     # x
                      [-2.0, 0.0, 3.0, 2.0, 4.0, 0.0],    # y: opposes x in norm, orthogonal in attn, parallel in mlp
                      [0.0, -1.0, -1.0, 0.0, 0.0, 0.0]])  # z: nothing in norm and mlp
    m = module_conflicts(g, layout, ["x", "y", "z"])
    assert m["conflict/module/norm/cos/x_vs_y"] == -1.0
    assert m["conflict/module/attn/cos/x_vs_y"] == 0.0
    assert m["conflict/module/mlp/cos/x_vs_y"] == pytest.approx(1.0)
    assert m["conflict/module/attn/cos/x_vs_z"] == pytest.approx(-1 / math.sqrt(2))
    assert m["conflict/module/attn/cos/y_vs_z"] == pytest.approx(-3 / (3 * math.sqrt(2)))
    assert m["conflict/module/norm/cos/x_vs_z"] == 0.0  # z is zero there: no direction, reported 0
    assert m["conflict/module/norm/conflicts"] == 1       # x.y < 0 (y.z = x.z = 0 are not conflicts)
    assert m["conflict/module/attn/conflicts"] == 2       # x.z and y.z
    assert m["conflict/module/mlp/conflicts"] == 0
    whole = g @ g.T
    for (i, a), (j, b) in [((0, "x"), (1, "y")), ((0, "x"), (2, "z")), ((1, "y"), (2, "z"))]:
        expected = float(whole[i, j] / (whole[i, i] * whole[j, j]).sqrt())
        assert m[f"conflict/model/cos/{a}_vs_{b}"] == pytest.approx(expected)
    assert m["conflict/model/conflicts"] == float(sum(whole[i, j] < 0 for i, j in [(0, 1), (0, 2), (1, 2)]))
    assert m["conflict/model/grad_norm/y"] == pytest.approx(float(g[1].norm()))
    assert (m["conflict/modules"], m["conflict/modules_in_conflict"], m["conflict/module_conflicts"]) == (3, 2, 3)
    # per-parameter gradients (lists in layout.params order, or name -> tensor) give the same numbers
    per_param = [[row[0:1], row[1:3], row[3:6]] for row in g]
    assert module_conflicts(per_param, layout, ["x", "y", "z"]) == m
    by_name = [dict(zip(layout.names, parts)) for parts in per_param]
    del by_name[2]["blk.norm.w"]  # absent = zero
    assert module_conflicts(by_name, layout, ["x", "y", "z"]) == m
    with pytest.raises(ValueError, match=r"\[K, 6\]"):
        module_conflicts(g[:, :5], layout, ["x", "y", "z"])


class LinearObjective:
    """Micro-batch = {parameter name: coefficient}; loss = sum of coefficient . parameter (gradient = coefficient)."""

    def units(self, mb):
        return 1.0

    def samples(self, mb):
        return 1

    def __call__(self, model, mb):
        params = dict(model.named_parameters())
        return Aggregate(sum((params[n] * c).sum() for n, c in mb.items()), 1.0), {}


class TwoModules(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = torch.nn.ParameterDict({"a": torch.nn.Parameter(torch.zeros(2))})
        self.mlp = torch.nn.ParameterDict({"b": torch.nn.Parameter(torch.zeros(2))})


def test_measure_conflicts_on_a_model_leaves_weights_and_grads_alone():
    model = TwoModules()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    t = torch.tensor
    batches = [DomainBatch("p", [{"self_attn.a": t([1.0, 0.0]), "mlp.b": t([2.0, 0.0])}]),
               DomainBatch("q", [{"self_attn.a": t([-1.0, 1.0]), "mlp.b": t([1.0, 0.0])}, {"mlp.b": t([1.0, 0.0])}])]
    m = measure_conflicts(model, opt, batches, LinearObjective(), grouping="type")
    # q's loss is the mean over its two micro-batches; its share of the samples is 2/3, p's 1/3
    assert m["conflict/module/attn/cos/p_vs_q"] == pytest.approx(-1 / math.sqrt(2))
    assert m["conflict/module/mlp/cos/p_vs_q"] == pytest.approx(1.0)
    assert m["conflict/model/grad_norm/p"] == pytest.approx(math.sqrt(5) / 3)
    assert m["conflict/model/grad_norm/q"] == pytest.approx(2 / 3 * math.sqrt(0.25 + 0.25 + 1))
    assert m["conflict/model/conflicts"] == 0  # -1/2 + 2/2 > 0: no conflict over the whole model
    assert m["conflict/module/attn/conflicts"] == 1
    assert all(p.grad is None for p in model.parameters())
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())
    assert measure_conflicts(model, opt, batches[:1], LinearObjective()) == {}  # one domain: nothing to compare


def test_noise_floor_splits_each_domain_into_halves_without_changing_the_rest():
    model = TwoModules()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    t = torch.tensor
    p_mbs = [{"self_attn.a": t([1.0, 0.0]), "mlp.b": t([2.0, 0.0])}, {"self_attn.a": t([1.0, 1.0]), "mlp.b": t([0.0, 1.0])},
             {"self_attn.a": t([0.0, 3.0])}]
    batches = [DomainBatch("p", p_mbs), DomainBatch("q", [{"self_attn.a": t([-1.0, 1.0]), "mlp.b": t([1.0, 0.0])}])]
    plain = measure_conflicts(model, opt, batches, LinearObjective(), grouping="type")
    split = measure_conflicts(model, opt, batches, LinearObjective(), grouping="type", noise_floor=True)
    assert set(split) - set(plain) == {"conflict/model/half_cos/p", "conflict/module/attn/half_cos/p",
                                       "conflict/module/mlp/half_cos/p"}  # q has one micro-batch: no halves
    assert all(split[k] == pytest.approx(plain[k], abs=1e-12) for k in plain)
    # halves of p: the first micro-batch, and the other two (a: (1,4), b: (0,1))
    assert split["conflict/module/attn/half_cos/p"] == pytest.approx(1 / math.sqrt(17))
    assert split["conflict/module/mlp/half_cos/p"] == 0.0
    assert split["conflict/model/half_cos/p"] == pytest.approx(1 / (math.sqrt(5) * math.sqrt(18)))
    assert all(p.grad is None for p in model.parameters())


class PromptObjective:
    """Loss = sum over rows of w[first prompt token]: the gradient counts each prompt's responses."""

    def units(self, mb):
        return 1.0

    def samples(self, mb):
        return len(mb)

    def __call__(self, model, mb):
        w = dict(model.named_parameters())["self_attn.a"]
        return Aggregate(w[mb.input_ids[:, 0]].sum(), 1.0), {}


def prompt_micro_batch(prompts):
    """One micro-batch, a row per response of the given prompt ids (prompt: 2 tokens, response: 1)."""
    ids = torch.tensor([[p, p, 0] for p in prompts])
    n = len(prompts)
    return MicroBatch(ids, torch.ones(n, 3), torch.ones(n, 1), torch.zeros(n, 1), None, torch.ones(n))


def test_noise_floor_halves_share_no_prompt():
    # responses shuffled over micro-batches (as the engine does): every micro-batch holds both prompts,
    # so halves of micro-batches would share both prompts; halves of prompts are disjoint
    model = torch.nn.Module()
    model.self_attn = torch.nn.ParameterDict({"a": torch.nn.Parameter(torch.zeros(3))})
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = [DomainBatch("p", [prompt_micro_batch([0, 1]), prompt_micro_batch([1, 0, 0])]),
               DomainBatch("q", [prompt_micro_batch([2])])]
    halves = prompt_halves(batches[0])
    assert [[mb.input_ids[:, 0].tolist() for mb in h.micro_batches] for h in halves] == [[[0], [0, 0]], [[1], [1]]]
    m = measure_conflicts(model, opt, batches, PromptObjective(), grouping="model", noise_floor=True)
    assert m["conflict/model/half_cos/p"] == 0.0  # disjoint prompts: gradients on disjoint coordinates
    assert "conflict/model/half_cos/q" not in m  # one prompt: no halves
    assert prompt_halves(batches[1]) == [batches[1]]


def test_running_cosines_by_hand():
    running = RunningCosines(decay=0.5)
    t = torch.tensor
    first = running.update({"a": t([1.0, 0.0]), "b": t([0.0, 1.0])})
    assert first == {"conflict/model/running_cos/a_vs_b": 0.0}
    second = running.update({"a": t([1.0, 0.0]), "b": t([2.0, 1.0])})
    # a: 0.5 (1,0) + 0.5 (1,0) = (1,0); b: 0.5 (0,1) + 0.5 (2,1) = (1,1)
    assert torch.equal(running.means["b"], t([1.0, 1.0], dtype=torch.float64))
    assert second["conflict/model/running_cos/a_vs_b"] == pytest.approx(1 / math.sqrt(2))
    third = running.update({"a": t([-3.0, 0.0]), "c": t([0.0, 5.0])})  # b missing: keeps its mean
    # a: 0.5 (1,0) + 0.5 (-3,0) = (-1,0); c: (0,5) as is
    assert third == pytest.approx({"conflict/model/running_cos/a_vs_b": -1 / math.sqrt(2),
                                   "conflict/model/running_cos/a_vs_c": 0.0,
                                   "conflict/model/running_cos/b_vs_c": 1 / math.sqrt(2)})
    with pytest.raises(ValueError, match="decay"):
        RunningCosines(1.0)


def test_measure_conflicts_feeds_running_means_the_unscaled_domain_gradients():
    model = TwoModules()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    t = torch.tensor
    batches = [DomainBatch("p", [{"self_attn.a": t([1.0, 0.0]), "mlp.b": t([2.0, 0.0])}]),
               DomainBatch("q", [{"self_attn.a": t([-1.0, 1.0])}, {"mlp.b": t([1.0, 0.0])}])]
    for noise_floor in (False, True):
        running = RunningCosines()
        m = measure_conflicts(model, opt, batches, LinearObjective(), grouping="type", noise_floor=noise_floor,
                              running=running)
        # q's loss is the mean over its micro-batches: grad L_q = (a: (-1,1), b: (1,0)) / 2, flat in type order
        assert torch.allclose(running.means["q"], t([-0.5, 0.5, 0.5, 0.0], dtype=torch.float64))
        assert torch.allclose(running.means["p"], t([1.0, 0.0, 2.0, 0.0], dtype=torch.float64))
        assert m["conflict/model/running_cos/p_vs_q"] == pytest.approx(m["conflict/model/cos/p_vs_q"])


# ---- MGS ----------------------------------------------------------------------------------
def two_module_batches():
    """Domains p, q: in attn (a) their gradients conflict, in mlp (b) they agree, over the whole model
    they do not conflict (a: -1, b: +2 -> dot +1)."""
    t = torch.tensor
    return [DomainBatch("p", [{"self_attn.a": t([1.0, 0.0]), "mlp.b": t([2.0, 0.0])}]),
            DomainBatch("q", [{"self_attn.a": t([-1.0, 1.0]), "mlp.b": t([1.0, 0.0])}])]


def step_of(rule, grouping_batches=None):
    model = TwoModules()
    rule.update(model, torch.optim.SGD(model.parameters(), lr=1.0), grouping_batches or two_module_batches(),
                LinearObjective(), step=0)
    return {n: -p.detach() for n, p in model.named_parameters()}  # lr 1 from zero: the update direction


def test_mgs_projects_only_in_the_module_that_conflicts():
    mgs = step_of(MGS(modules="type"))
    # shares 1/2 each. attn: PCGrad of (1,0), (-1,1): (1,0) -> (1/2,1/2), (-1,1) -> (0,1); sum (1/2,3/2), halved
    assert torch.allclose(mgs["self_attn.a"], torch.tensor([0.25, 0.75]))
    # mlp: no conflict, the plain sum (2,0) + (1,0), halved
    assert torch.allclose(mgs["mlp.b"], torch.tensor([1.5, 0.0]))
    joint = step_of(Joint())
    assert torch.allclose(joint["mlp.b"], mgs["mlp.b"]) and not torch.allclose(joint["self_attn.a"], mgs["self_attn.a"])
    # over the whole model there is no conflict: PCGrad (= MGS with one module) is the joint step
    for whole in (step_of(PCGrad()), step_of(MGS(modules="model"))):
        assert all(torch.allclose(whole[n], joint[n]) for n in joint)
    # a user grouping that puts the conflict in its own module gives the same answer
    user = step_of(MGS(modules={"attn": ["self_attn.*"], "mlp": ["mlp.*"]}))
    assert all(torch.equal(user[n], mgs[n]) for n in mgs)


def load_conflict_probe(monkeypatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "conflict_probe.py"
    spec = importlib.util.spec_from_file_location("conflict_probe", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "conflict_probe", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_conflict_probe_wraps_a_rule_and_summarizes_old_and_new_names(tmp_path, monkeypatch):
    probe = load_conflict_probe(monkeypatch)
    rule = probe.ProbedRule(Joint())
    model = TwoModules()
    result = rule.update(model, torch.optim.SGD(model.parameters(), lr=1.0), two_module_batches(),
                         LinearObjective(), step=0)
    joint = step_of(Joint())
    assert all(torch.equal(-p.detach(), joint[n]) for n, p in model.named_parameters())  # the rule's step as is
    assert result.extra["conflict/module/attn/cos/p_vs_q"] == pytest.approx(-1 / math.sqrt(2))
    assert result.extra["conflict/model/running_cos/p_vs_q"] == pytest.approx(result.extra["conflict/model/cos/p_vs_q"])
    metrics = tmp_path / "metrics.jsonl"
    records = [{"update": {"_all": {"conflict/model/cos/p_vs_q": c, "self:p": -c, "conflict/modules": 2.0}}}
               for c in (0.5, -0.25)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    summary = probe.summarize(metrics)
    assert set(summary) == {"conflict/model/cos/p_vs_q", "self:p"}
    assert summary["conflict/model/cos/p_vs_q"]["all"] == 0.125
    assert summary["self:p"]["negative_share"] == 0.5


def test_mgs_logs_its_own_module_conflicts():
    model = TwoModules()
    result = MGS(modules="type").update(model, torch.optim.SGD(model.parameters(), lr=1.0), two_module_batches(),
                                        LinearObjective(), step=0)
    assert result.extra["conflicts"] == 0 and result.extra["module_conflicts"] == 1
    assert result.extra["conflict/module/attn/cos/p_vs_q"] == pytest.approx(-1 / math.sqrt(2))
    assert result.extra["conflict/module/mlp/conflicts"] == 0
    assert set(result.domains) == {"p", "q"} and result.domains["q"]["loss"] == 0.0  # losses at the zero start
    model = TwoModules()
    quiet = MGS(modules="type", log_conflicts=False).update(model, torch.optim.SGD(model.parameters(), lr=1.0),
                                                            two_module_batches(), LinearObjective(), step=0)
    assert not any(k.startswith("conflict/") for k in quiet.extra) and quiet.extra["module_conflicts"] == 1


def qwen2_case(seed=0):
    """A tiny random Qwen2 and a GRPO mini-batch of three domains (random tokens and advantages)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                         tie_word_embeddings=False))
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for d in range(3):
        ids = torch.randint(0, 64, (4, 12), generator=gen)
        old = torch.randn(4, 6, generator=gen) - 4.0
        mb = MicroBatch(ids, torch.ones_like(ids), torch.ones(4, 6, dtype=torch.long), old, old - 0.01,
                        torch.randn(4, generator=gen))
        batches.append(DomainBatch(f"d{d}", [mb.select([0, 1]), mb.select([2, 3])]))
    return model, batches


def updated(rule, seed=0, steps=2):
    model, batches = qwen2_case(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    objective = GRPOObjective(GRPOConfig(beta=0.01))
    for step in range(steps):
        rule.update(model, opt, batches, objective, step=step)
    return weights(model)


def test_mgs_with_one_module_is_exactly_pcgrad():
    pytest.importorskip("transformers")
    pcgrad = updated(PCGrad(seed=3))
    assert torch.equal(updated(MGS(modules="model", seed=3)), pcgrad)
    # per-layer modules do differ (the equality above is not vacuous): conflicts differ module by module
    assert not torch.equal(updated(MGS(seed=3)), pcgrad)
    assert isinstance(make_rule("mgs", modules="type"), MGS)
    with pytest.raises(ValueError, match="module grouping must be one of"):
        make_rule("mgs", modules="per_layer")  # at construction, not at the first update


# ---- through the engine, on the tiny offline Qwen2 policy -----------------------------------
@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from trainers.tiny import build_tiny_policy

    torch.set_num_threads(1)
    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy", sft_steps=40, lr=1e-2, batch_size=32,
                             log_every=0)


def engine_config(policy_dir, out_dir, **update):
    from trainers.config import from_dict

    return from_dict({"model": {"kind": "tiny", "path": str(policy_dir)},
                      "data": {"tasks": ["arith", "max"], "prompts_per_domain": 2, "eval_prompts": 0, "pool_size": 16},
                      "rollout": {"group_size": 4, "max_new_tokens": 12},
                      "update": {"lr": 1e-3, "mini_batches": 1, "micro_batch_size": 8, **update},
                      "run": {"steps": 1, "out_dir": str(out_dir), "eval_every": 0, "checkpoint_every": 0,
                              "plot_every": 0, "tensorboard": False}})


def weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_engine_logs_conflict_metrics_for_any_rule_without_changing_its_update(policy_dir, scorer, tmp_path):
    from trainers.engine import LocalEngine

    runs = {}
    for flag in (False, True):
        cfg = engine_config(policy_dir, tmp_path / str(flag), rule="joint", conflict_metrics=flag,
                            conflict_noise_floor=flag, micro_batch_size=4)  # 2 micro-batches per domain
        engine = LocalEngine(cfg, scorer=scorer)
        runs[flag] = (engine.step(0)["update"]["_all"], weights(engine.model))
        engine.close()
    assert not any(k.startswith("conflict/") for k in runs[False][0])
    logged = runs[True][0]
    assert torch.equal(runs[False][1], runs[True][1])  # the diagnostic does not touch the joint step
    modules = ["embed", "layer0.attn", "layer0.mlp", "layer0.norm", "layer1.attn", "layer1.mlp", "layer1.norm",
               "final_norm"]
    assert logged["conflict/modules"] == len(modules)
    for m in modules:
        assert -1.0 <= logged[f"conflict/module/{m}/cos/arith_vs_max"] <= 1.0
        assert logged[f"conflict/module/{m}/conflicts"] in (0.0, 1.0)
    assert logged["conflict/module_conflicts"] == sum(logged[f"conflict/module/{m}/conflicts"] for m in modules)
    assert logged["conflict/model/grad_norm/arith"] > 0
    assert -1.0 <= logged["conflict/model/half_cos/max"] <= 1.0 and "conflict/module/layer1.mlp/half_cos/arith" in logged


def test_engine_trains_with_mgs_and_a_configured_grouping(policy_dir, scorer, tmp_path):
    from trainers.engine import LocalEngine

    cfg = engine_config(policy_dir, tmp_path / "mgs", rule="mgs", module_groups={"attn": ["*.self_attn.*"]},
                        conflict_metrics=True, mini_batches=2, micro_batch_size=2)
    cfg.run.steps = 2
    engine = LocalEngine(cfg, scorer=scorer)
    assert isinstance(engine.rule, MGS)
    before = weights(engine.model)
    records = engine.train()
    engine.close()
    assert not torch.equal(before, weights(engine.model))
    for record in records:
        logged = record["update"]["_all"]
        assert logged["conflict/modules"] == 2  # attn, and everything else in "other"
        assert {"conflict/module/attn/cos/arith_vs_max", "conflict/module/other/cos/arith_vs_max",
                "module_conflicts", "grad_norm"} <= set(logged)
        assert {"arith", "max"} <= set(record["update"])


def test_engine_noise_floor_is_measured_under_mgs_and_refused_without_the_diagnostic(policy_dir, scorer, tmp_path):
    """MGS reports its own inter-domain metrics, but not the halves' cosines: asking for the noise floor
    must still give them (it was silently dropped); the noise floor alone is a config error."""
    from trainers.engine import LocalEngine

    cfg = engine_config(policy_dir, tmp_path / "mgs", rule="mgs", conflict_metrics=True, conflict_noise_floor=True)
    engine = LocalEngine(cfg, scorer=scorer)
    logged = engine.step(0)["update"]["_all"]
    engine.close()
    assert -1.0 <= logged["conflict/model/half_cos/arith"] <= 1.0
    with pytest.raises(ValueError, match="conflict_noise_floor needs conflict_metrics"):
        LocalEngine(engine_config(policy_dir, tmp_path / "off", conflict_noise_floor=True), scorer=scorer)
