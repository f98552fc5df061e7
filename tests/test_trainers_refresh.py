"""Refresh phase at the end of a curriculum, and the data-free conflict-subspace rollback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from trainers import rollback  # noqa: E402
from trainers.config import from_dict  # noqa: E402
from trainers.curricula import MixedSampler, PhaseSampler, RefreshSampler, refresh_step_count  # noqa: E402
from trainers.engine import LocalEngine  # noqa: E402
from trainers.tasks import Prompt  # noqa: E402
from trainers.tiny import build_tiny_policy, tiny_config  # noqa: E402

from mdreward import Scorer  # noqa: E402


def _pools():
    return {d: [Prompt(f"{d}{i}", d, "math", "q", "1") for i in range(5)] for d in ("arith", "max", "prog")}


# ---- refresh phase ----------------------------------------------------------------------------
def test_refresh_step_count_is_a_count_or_a_fraction_of_the_run():
    assert refresh_step_count(3, 10) == 3
    assert refresh_step_count(0.25, 8) == 2
    assert refresh_step_count(10, 10) == 10
    for bad in (0, -1, 1.5, 11, 0.01):  # none, negative, fractional count, longer than the run, rounds to 0
        with pytest.raises(ValueError, match="refresh_steps"):
            refresh_step_count(bad, 10)


@pytest.mark.parametrize("curriculum", ["mixed", "phases"])
def test_refresh_sampler_keeps_the_curriculum_then_trains_only_the_refresh_domain(curriculum):
    pools = _pools()
    base = MixedSampler(pools, 2) if curriculum == "mixed" else PhaseSampler(pools, 6, total_steps=6)
    sampler = RefreshSampler(base, pools["arith"], batch_size=6, start=6)
    for step in range(6):
        assert sampler.batch(step) == base.batch(step) and not sampler.in_refresh(step)
    for step in range(6, 9):
        batch = sampler.batch(step)
        assert len(batch) == 6 and {p.domain for p in batch} == {"arith"} and sampler.in_refresh(step)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy", sft_steps=20, lr=1e-2, batch_size=16,
                             log_every=0)


def _config(policy_dir, out_dir, **data):
    return from_dict({
        "model": {"kind": "tiny", "path": str(policy_dir)},
        "data": {"tasks": ["arith", "max"], "prompts_per_domain": 2, "eval_prompts": 0, "pool_size": 16, **data},
        "rollout": {"group_size": 2, "max_new_tokens": 8},
        "update": {"rule": "joint", "lr": 1e-3, "micro_batch_size": 8},
        "run": {"steps": 4, "out_dir": str(out_dir), "eval_every": 0, "checkpoint_every": 0, "plot_every": 0,
                "tensorboard": False, "keep_checkpoints": [2]}})


@pytest.mark.parametrize("curriculum", ["omni_thinker", "mixed"])
def test_engine_ends_the_run_with_exactly_the_configured_refresh_steps(policy_dir, tmp_path, curriculum):
    cfg = _config(policy_dir, tmp_path / "run", curriculum=curriculum, curriculum_order=["max", "arith"],
                  refresh_domain="max", refresh_steps=0.5)
    with Scorer() as scorer:
        engine = LocalEngine(cfg, scorer=scorer)
        records = engine.train()
    domains = [set(r["train"]) for r in records]
    phases = [r["phase"] for r in records]
    if curriculum == "omni_thinker":  # the phases share the 2 steps before the refresh
        assert domains == [{"max"}, {"arith"}, {"max"}, {"max"}]
        assert phases == ["max", "arith", "refresh", "refresh"]
    else:
        assert domains == [{"arith", "max"}] * 2 + [{"max"}] * 2
        assert phases == ["mixed", "mixed", "refresh", "refresh"]
    assert all(r["train"]["max"]["n"] == 4 * 2 for r in records[2:])  # the full batch: 2 domains x 2 prompts x G=2
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in logged] == phases
    kept = torch.load(tmp_path / "run" / "checkpoint-2.pt", weights_only=False)  # run.keep_checkpoints
    assert kept["next_step"] == 2 and not (tmp_path / "run" / "checkpoint-4.pt").exists()


def test_refresh_config_errors_name_the_field(policy_dir, tmp_path):
    with Scorer() as scorer:
        with pytest.raises(ValueError, match="refresh_domain 'prog'"):
            LocalEngine(_config(policy_dir, tmp_path / "a", refresh_domain="prog", refresh_steps=1), scorer=scorer)
        with pytest.raises(ValueError, match="refresh_steps is set but data.refresh_domain is not"):
            LocalEngine(_config(policy_dir, tmp_path / "b", refresh_steps=1), scorer=scorer)


# ---- rollback ---------------------------------------------------------------------------------
HEAD_DIM = 4


def _model_state(seed: int) -> dict[str, torch.Tensor]:
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(32, hidden=8, layers=2, heads=2, kv_heads=1, intermediate=6, max_positions=16)
    return {k: v.float() for k, v in Qwen2ForCausalLM(cfg).state_dict().items()}  # float32 whatever the default


def _three_states():
    base = _model_state(0)
    gen = torch.Generator().manual_seed(1)
    before = {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in base.items()}
    after = {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in before.items()}
    for state in (before, after):  # tied embeddings, as a saved model has them
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return base, before, after


def test_conflict_score_by_hand_on_a_constructed_case():
    """One MLP of 4 neurons: 0 unchanged, 1 moved back against the earlier edit, 2 moved along it,
    3 changed a lot by the later domain only."""
    shapes = {"gate_proj": (4, 3), "up_proj": (4, 3), "down_proj": (3, 4)}
    base = {f"l.mlp.{n}.weight": torch.zeros(s) for n, s in shapes.items()}
    before = {k: v.clone() for k, v in base.items()}
    after = {k: v.clone() for k, v in base.items()}
    before["l.mlp.gate_proj.weight"][1] = torch.tensor([1.0, 2.0, 0.0])   # earlier edit of neuron 1
    after["l.mlp.gate_proj.weight"][1] = torch.tensor([0.5, 0.0, 3.0])    # later edit (-0.5, -2, +3)
    before["l.mlp.down_proj.weight"][:, 1] = torch.tensor([1.0, 0.0, 0.0])
    after["l.mlp.down_proj.weight"][:, 1] = torch.tensor([0.0, 0.0, 0.0])  # later edit (-1, 0, 0)
    before["l.mlp.up_proj.weight"][2] = torch.tensor([1.0, 1.0, 1.0])
    after["l.mlp.up_proj.weight"][2] = torch.tensor([2.0, 2.0, 2.0])      # along the earlier edit
    after["l.mlp.up_proj.weight"][3] = torch.tensor([5.0, 0.0, 0.0])      # later domain only
    (group,) = rollback.find_groups(before, head_dim=None, scope="mlp")
    assert (group.kind, group.count) == ("mlp", 4)
    conflict = rollback.component_scores(group, before=before, after=after, base=base, criterion="conflict")
    # neuron 1: -<dA, dB> = -(1 * -0.5 + 2 * -2 + 0 * 3) - (1 * -1) = 4.5 + 1 = 5.5; neuron 2: -3 -> 0
    assert conflict.tolist() == [0.0, 5.5, 0.0, 0.0]
    magnitude = rollback.component_scores(group, before=before, after=after, base=base, criterion="magnitude")
    assert magnitude.tolist() == [0.0, 0.25 + 4 + 9 + 1, 3.0, 25.0]
    pick = rollback.select([group], before=before, after=after, base=base, fraction=0.25, criterion="conflict")
    assert pick.chosen == {"l.mlp": [1]}
    pick = rollback.select([group], before=before, after=after, base=base, fraction=0.5, criterion="magnitude")
    assert pick.chosen == {"l.mlp": [1, 3]}
    with pytest.raises(ValueError, match="--base"):
        rollback.component_scores(group, before=before, after=after, criterion="conflict")


def test_rollback_resets_exactly_the_selected_neurons_and_heads():
    base, before, after = _three_states()
    groups = rollback.find_groups(after, HEAD_DIM, scope="both")
    assert sorted((g.name, g.count) for g in groups) == sorted(
        [(f"model.layers.{i}.mlp", 6) for i in range(2)] + [(f"model.layers.{i}.self_attn.q_heads", 2) for i in range(2)]
        + [(f"model.layers.{i}.self_attn.kv_heads", 1) for i in range(2)])
    pick = rollback.select(groups, before=before, after=after, base=base, fraction=0.25, criterion="conflict")
    assert sum(len(pick.chosen[f"model.layers.{i}.mlp"]) for i in range(2)) == 3   # 25% of 12 neurons
    assert sum(len(v) for k, v in pick.chosen.items() if "self_attn" in k) == 2      # 25% of 6 heads, rounded
    out = rollback.apply_rollback(groups, pick, before=before, after=after)
    expected = {k: v.clone() for k, v in after.items()}  # built by hand from the selection
    for i in range(2):
        mlp = f"model.layers.{i}.mlp"
        for j in pick.chosen[mlp]:
            for name in ("gate_proj", "up_proj"):
                expected[f"{mlp}.{name}.weight"][j] = before[f"{mlp}.{name}.weight"][j]
            expected[f"{mlp}.down_proj.weight"][:, j] = before[f"{mlp}.down_proj.weight"][:, j]
        attn = f"model.layers.{i}.self_attn"
        for h in pick.chosen[f"{attn}.q_heads"]:
            rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            for key in ("q_proj.weight", "q_proj.bias"):
                expected[f"{attn}.{key}"][rows] = before[f"{attn}.{key}"][rows]
            expected[f"{attn}.o_proj.weight"][:, rows] = before[f"{attn}.o_proj.weight"][:, rows]
        for h in pick.chosen[f"{attn}.kv_heads"]:
            rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            for key in ("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"):
                expected[f"{attn}.{key}"][rows] = before[f"{attn}.{key}"][rows]
    assert set(out) == set(after)
    for key in after:
        assert torch.equal(out[key], expected[key]), key
    changed = [k for k in after if not torch.equal(out[k], after[k])]
    assert changed and all(".mlp." in k or ".self_attn." in k for k in changed)


def test_fraction_zero_is_after_and_fraction_one_is_before_over_the_scope():
    base, before, after = _three_states()
    for criterion in rollback.CRITERIA:
        groups = rollback.find_groups(after, HEAD_DIM, scope="both")
        none = rollback.select(groups, before=before, after=after, base=base, fraction=0.0, criterion=criterion)
        out = rollback.apply_rollback(groups, none, before=before, after=after)
        assert all(torch.equal(out[k], after[k]) for k in after)
        every = rollback.select(groups, before=before, after=after, base=base, fraction=1.0, criterion=criterion)
        out = rollback.apply_rollback(groups, every, before=before, after=after)
        in_scope = {p.param for g in groups for p in g.parts}
        for key in after:
            assert torch.equal(out[key], before[key] if key in in_scope else after[key]), key
    mlp_only = rollback.find_groups(after, HEAD_DIM, scope="mlp")
    every = rollback.select(mlp_only, before=before, after=after, base=base, fraction=1.0)
    out = rollback.apply_rollback(mlp_only, every, before=before, after=after)
    assert all(torch.equal(out[k], before[k] if ".mlp." in k else after[k]) for k in after)


def test_cli_on_a_trainers_checkpoint_and_on_hf_dirs(tmp_path):
    from transformers import Qwen2ForCausalLM

    base, before, after = _three_states()
    cfg = tiny_config(32, hidden=8, layers=2, heads=2, kv_heads=1, intermediate=6, max_positions=16)
    dirs = {}
    for name, state in (("base", base), ("before", before), ("after", after)):
        model = Qwen2ForCausalLM(cfg).float()
        model.load_state_dict(state)
        model.save_pretrained(tmp_path / name)
        dirs[name] = tmp_path / name
        torch.save({"model": state, "next_step": 7, "config": {"model": {"path": str(tmp_path / "base")}}},
                   tmp_path / f"{name}.pt")
    groups = rollback.find_groups(after, HEAD_DIM, scope="both")
    want = rollback.apply_rollback(groups, rollback.select(groups, before=before, after=after, base=base,
                                                           fraction=0.5), before=before, after=after)
    for suffix in (".pt", ""):
        out = tmp_path / f"out{suffix or '-hf'}"
        args = [f"--{n}={tmp_path / (n + suffix)}" for n in ("base", "before", "after")]
        assert rollback.main([*args, "--fraction", "0.5", "--scope", "both", "--out", str(out)]) == 0
        got, head = rollback.load_state(out / "checkpoint.pt" if suffix else out)
        assert head == HEAD_DIM  # from the model config (HF dir, or the checkpoint's model.path)
        assert [k for k in want if not torch.equal(got[k], want[k])] == []
        report = json.loads((out / "rollback.json").read_text())
        assert report["scope"] == "both" and report["criterion"] == "conflict" and report["selected"]
    assert torch.load(tmp_path / "out.pt" / "checkpoint.pt", weights_only=False)["next_step"] == 7
    with pytest.raises(SystemExit):  # conflict without --base: a usage error, not a traceback
        rollback.main([f"--before={tmp_path / 'before.pt'}", f"--after={tmp_path / 'after.pt'}",
                       "--fraction", "0.1", "--out", str(tmp_path / "x")])


def test_a_head_size_that_does_not_divide_the_projections_is_an_error_not_a_silent_misgrouping(tmp_path):
    """Query rows 8, key/value rows 4: a head size of 3 would otherwise score mixed-row 'heads'."""
    _, before, after = _three_states()
    with pytest.raises(ValueError, match="--head-dim 3"):
        rollback.find_groups(after, 3, scope="attn")
    torch.save({"model": before}, tmp_path / "before.pt")
    torch.save({"model": after}, tmp_path / "after.pt")
    with pytest.raises(SystemExit):  # a usage error naming --head-dim, not a traceback or a wrong rollback
        rollback.main([f"--before={tmp_path / 'before.pt'}", f"--after={tmp_path / 'after.pt'}", "--head-dim", "3",
                       "--scope", "attn", "--criterion", "magnitude", "--fraction", "0.5", "--out", str(tmp_path / "x")])


class _Retrained(Exception):
    pass


def test_forgetting_benchmark_retrains_when_the_kept_checkpoints_came_from_another_config(tmp_path, monkeypatch):
    """Checkpoints left by a run with another --order (or --set) must not be evaluated as this run's."""
    import argparse
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "forgetting_refresh_rollback.py"
    spec = importlib.util.spec_from_file_location("forgetting_refresh_rollback", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "forgetting_refresh_rollback", bench)
    spec.loader.exec_module(bench)

    def args(order):
        return argparse.Namespace(order=order, phase_steps=2, refresh_steps=1, set=[], eval_samples=2,
                                  policy=str(tmp_path / "policy"), out=str(tmp_path / "out"), name="t", seeds=[1],
                                  plot=None, fractions=[0.5], criteria=["random"], scopes=["mlp"])

    old, steps = bench.run_config(args(["max", "arith", "prog"]), 1, tmp_path / "out" / "seed1")
    (tmp_path / "out" / "seed1").mkdir(parents=True)
    for step in steps.values():  # what a finished run with the other order leaves behind
        torch.save({"model": {}, "config": old.to_dict()}, tmp_path / "out" / "seed1" / f"checkpoint-{step}.pt")
    new, _ = bench.run_config(args(["arith", "max", "prog"]), 1, tmp_path / "out" / "seed1")
    assert bench.trained_with(old, [tmp_path / "out" / "seed1" / f"checkpoint-{s}.pt" for s in steps.values()])

    class Engine:
        def __init__(self, cfg, scorer=None):
            self.cfg = cfg

        def train(self):
            assert self.cfg.data.curriculum_order == ["arith", "max", "prog"]
            raise _Retrained

    monkeypatch.setattr(bench, "LocalEngine", Engine)
    with pytest.raises(_Retrained):
        bench.one_seed(args(["arith", "max", "prog"]), 1, scorer=None)


def test_cli_names_the_argument_whose_file_is_not_a_checkpoint(tmp_path, capsys):
    _, before, _ = _three_states()
    torch.save({"model": before}, tmp_path / "before.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    for bad, flag in ((tmp_path / "notes.pt", "--after"), (tmp_path / "empty", "--after")):
        with pytest.raises(SystemExit):
            rollback.main([f"--before={tmp_path / 'before.pt'}", f"--after={bad}", "--criterion", "magnitude",
                           "--fraction", "0.1", "--out", str(tmp_path / "x")])
        assert f"{flag} {bad}" in capsys.readouterr().err
