"""mdreward's update rules as verl's actor update (mdreward.integrations.verl_update), on CPU with verl's
own engine methods, ``ppo_loss``, actor config and mini-batch format (tests/verl_update_support.py)."""
from __future__ import annotations

import os
import socket
import tempfile
import time

import pytest

verl = pytest.importorskip("verl", reason="verl is not installed (scripts/setup-tests.sh installs it)")
torch = pytest.importorskip("torch")

import torch.distributed as dist
import torch.multiprocessing as mp
import verl_update_support as support
from verl.utils import tensordict_utils as tu

from mdreward.integrations.verl_update import (UpdateSettings, enable_domain_updates, prepare_config, row_domains,
                                               split_by_domain, zero_weighted)
from trainers.updates import seeded_order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def process_group():
    """A one-rank gloo group, as verl's engine calls collectives over its data-parallel group."""
    if dist.is_initialized():
        yield
        return
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def actor():
    return support.verl_actor_config()


# 4 math rows and 2 code rows: unequal sample shares (4/6, 2/6), micro-batches of 2 divide each domain
SOURCES = ["math__a", "codegen__b", "math__a", "math__a", "codegen__b", "openai/gsm8k"]


def engines(actor, settings=None):
    """Two engines over identical tiny models: verl's plain one and (with ``settings``) the rule's."""
    plain = support.cpu_engine(support.tiny_model(), actor)
    ours = support.cpu_engine(support.tiny_model(), actor)
    return plain, (enable_domain_updates(ours, settings) if settings else ours)


def test_rows_are_grouped_by_the_reward_functions_data_source_table():
    data = support.mini_batch(["openai/gsm8k", "math__x", "codegen__y", "unmapped_src", "creative__z"])
    assert row_domains(data, UpdateSettings().table()) == ["math", "math", "code", "unmapped_src", "creative__z"]
    table = UpdateSettings.from_mapping({"data_source_map": {"creative__*": "writing"}}).table()
    assert row_domains(data, table)[4] == "writing"
    batches = split_by_domain(data, table, dist.group.WORLD, "token-mean")
    assert [b.name for b in batches] == ["code", "math", "unmapped_src", "writing"]
    math_rows = [mb.data for mb in batches[1].micro_batches]
    assert [len(mb) for mb in math_rows] == [2]  # micro_batch_size_per_gpu = 2
    expected = tu.index_select_tensor_dict(data, [0, 1])
    assert all(torch.equal(a, b) for a, b in zip(math_rows[0]["input_ids"].unbind(), expected["input_ids"].unbind()))
    tokens = {b.name: sum(mb.units for mb in b.micro_batches) for b in batches}
    assert tokens["math"] == float(data["loss_mask"].unbind()[0].sum() + data["loss_mask"].unbind()[1].sum())


def test_joint_with_token_shares_is_verls_own_update(actor):
    """Under token-mean, Σ_k (tokens_k / tokens) L_k is the plain loss: the objective adapter is exact."""
    plain, ours = engines(actor, UpdateSettings.from_mapping({"rule": "joint", "share_by": "units"}))
    data = support.mini_batch(SOURCES)
    plain.train_batch(data, support.loss_function(actor))
    out = ours.train_batch(support.mini_batch(SOURCES), support.loss_function(actor))
    before = support.flat_params(support.tiny_model())
    moved = support.flat_params(plain.module) - before
    assert moved.abs().max() > 1e-4
    torch.testing.assert_close(support.flat_params(ours.module), support.flat_params(plain.module),
                               rtol=0, atol=1e-6)
    assert set(out["metrics"]) >= {"actor/pg_loss", "grad_norm", "mdreward/math/loss"}


def test_cgpo_is_per_domain_verl_steps_at_scaled_lr_then_interpolation(actor):
    """By hand with verl's own ``train_batch`` per domain: phi_0, one step per domain in the seeded order at
    lr * n_k / n, then theta = phi_0 + alpha (phi_K - phi_0); the learning rate comes back unchanged."""
    alpha, seed = 1.5, 3
    reference, ours = engines(actor, UpdateSettings.from_mapping({"rule": "cgpo", "alpha": alpha, "seed": seed}))
    data = support.mini_batch(SOURCES)
    domains = row_domains(data, UpdateSettings().table())
    order = seeded_order(set(domains), seed, 0)
    phi0 = support.flat_params(reference.module)
    for name in order:
        rows = [i for i, d in enumerate(domains) if d == name]
        for group in reference.optimizer.param_groups:
            group["lr"] = support.LR * len(rows) / len(domains)
        reference.train_batch(tu.index_select_tensor_dict(data, rows), support.loss_function(actor))
    for group in reference.optimizer.param_groups:
        group["lr"] = support.LR
    expected = phi0 + alpha * (support.flat_params(reference.module) - phi0)

    out = ours.train_batch(support.mini_batch(SOURCES), support.loss_function(actor))
    assert [g["lr"] for g in ours.optimizer.param_groups] == [support.LR] * len(ours.optimizer.param_groups)
    assert (expected - phi0).abs().max() > 1e-4
    torch.testing.assert_close(support.flat_params(ours.module), expected, rtol=0, atol=1e-6)
    assert out["metrics"]["mdreward/first_domain_index"] == [sorted(order).index(order[0])]
    # what verl's TrainingWorker does with them: gather over the ranks (one here), then flatten
    from itertools import chain

    from verl.utils.metric.utils import Metric

    gathered = {k: [v] for k, v in out["metrics"].items() if k != "grad_norm"}
    flat = {k: Metric.aggregate_dp(v) if isinstance(v[0], Metric) else list(chain.from_iterable(v))
            for k, v in gathered.items()}
    assert flat["mdreward/math/units"] == out["metrics"]["mdreward/math/units"]
    assert out["metrics"]["mdreward/math/units"] == [float(sum(data["loss_mask"].unbind()[i].sum() for i in range(6)
                                                               if domains[i] == "math"))]
    # the next mini-batch of the same scheduler step is keyed 1: its order is seeded_order(.., 1)
    assert ours._mini_batch_key() == 1


def test_a_zero_weighted_row_runs_forward_and_backward_and_adds_nothing(actor):
    engine = support.cpu_engine(support.tiny_model(), actor)
    data = support.mini_batch(SOURCES)
    row = zero_weighted(data)
    tu.assign_non_tensor(row, batch_num_tokens=1, global_batch_size=1, dp_size=1)
    calls = []
    engine.module.register_forward_hook(lambda *_: calls.append(1))
    engine.optimizer.zero_grad(set_to_none=True)
    loss, _ = engine.forward_step(row, loss_function=support.loss_function(actor), forward_only=False)
    loss.backward()
    grads = [p.grad for p in engine.module.parameters()]
    assert calls and all(g is not None for g in grads)  # the collectives of a real backward would have run
    assert all(float(g.abs().max()) == 0.0 for g in grads)
    assert float(loss.detach()) == 0.0


def test_an_all_masked_domain_sits_out_and_token_sum_is_refused():
    data = support.mini_batch(SOURCES)
    mask = data["loss_mask"]
    code = [i for i, s in enumerate(SOURCES) if s.startswith("codegen")]
    values = [m * (0 if i in code else 1) for i, m in enumerate(mask.unbind())]
    data["loss_mask"] = torch.nested.as_nested_tensor(values, layout=torch.jagged)
    assert [b.name for b in split_by_domain(data, UpdateSettings().table(), dist.group.WORLD, "token-mean")] \
        == ["math"]
    with pytest.raises(ValueError, match="token-sum"):
        split_by_domain(data, UpdateSettings().table(), dist.group.WORLD, "token-sum")


def test_settings_fail_at_start_and_reach_the_workers():
    with pytest.raises(ValueError, match="unknown update rule"):
        UpdateSettings.from_mapping({"rule": "cgpo2"})
    with pytest.raises(TypeError):
        UpdateSettings.from_mapping({"rule": "cgpo", "alpah": 1.2})
    with pytest.raises(ValueError, match="clip_grad"):
        UpdateSettings.from_mapping({"rule": "cgpo", "max_grad_norm": 1.0})
    from omegaconf import OmegaConf

    config = OmegaConf.create({"mdreward_update": {"rule": "cgpo_fix", "alpha": 1.2, "fixed_order": ["code", "math"]},
                               "ray_kwargs": {"ray_init": {}}})
    settings = prepare_config(config)
    assert "mdreward_update" not in config
    env = config.ray_kwargs.ray_init.runtime_env
    assert env.worker_process_setup_hook == "mdreward.integrations.verl_update.install"
    assert UpdateSettings.from_mapping(__import__("json").loads(env.env_vars.MDREWARD_VERL_UPDATE)) == settings
    rule = settings.build_rule()
    assert rule.domain_order(["math", "code"], 0) == ["code", "math"] and rule.phi0_device == "cpu"


def test_install_swaps_verls_actor_worker_class(monkeypatch):
    from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

    from mdreward.integrations import verl_update

    monkeypatch.setattr(ActorRolloutRefWorker, "actor_worker_cls", TrainingWorker)
    monkeypatch.delenv(verl_update.SETTINGS_ENV, raising=False)
    verl_update.install()
    assert ActorRolloutRefWorker.actor_worker_cls is TrainingWorker
    monkeypatch.setenv(verl_update.SETTINGS_ENV, UpdateSettings().to_json())
    verl_update.install()
    assert ActorRolloutRefWorker.actor_worker_cls is verl_update.DomainUpdateTrainingWorker


def test_two_ranks_one_without_code_rows_match_one_process_on_the_global_batch(actor):
    """gloo, DDP: rank 1 has no code rows, so it runs zero-weighted code micro-batches; both ranks end
    bit-identical and equal to one process running CGPO on the 8-row global mini-batches."""
    out_dir = tempfile.mkdtemp(prefix="verl_update_")
    # forkserver: verl, torch and transformers are imported once (in the server), not once per rank
    mp.get_context("forkserver").set_forkserver_preload(["verl_update_support", "mdreward.integrations.verl_update"])
    ranks = mp.start_processes(support.rank_main, args=(2, out_dir), nprocs=2, join=False,
                               start_method="forkserver")
    deadline = time.monotonic() + 300
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the 2-rank run did not finish in 300 s (a collective left unmatched?)")
    params = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(2)]
    assert torch.equal(params[0], params[1])

    single = enable_domain_updates(support.cpu_engine(support.tiny_model(), actor), support.cgpo_settings())
    for step in range(support.STEPS):
        single.train_batch(support.mini_batch(support.GLOBAL_SOURCES, seed=step), support.loss_function(actor))
    assert (params[0] - support.flat_params(support.tiny_model())).abs().max() > 1e-4
    torch.testing.assert_close(params[0], support.flat_params(single.module), rtol=0, atol=1e-5)


def test_the_launch_script_composes_with_verls_config(tmp_path):
    """examples/verl/run_cgpo.sh's overrides are valid verl keys, and its mdreward_update reaches the workers."""
    import json
    import subprocess

    from mdreward.integrations import verl_update

    shim = tmp_path / "python"
    shim.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "$ARGS_OUT"\n')
    shim.chmod(0o755)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "ARGS_OUT": str(tmp_path / "args"),
           "MODEL": "/models/qwen", "TRAIN": "/data/train.parquet", "RULE": "cgpo_fix", "ALPHA": "1.3"}
    subprocess.run(["bash", os.path.join(root, "examples", "verl", "run_cgpo.sh"), "trainer.total_epochs=2"],
                   env=env, check=True)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:2] == ["-m", "mdreward.integrations.verl_update"]
    config = verl_update.compose_config(args[2:])
    settings = prepare_config(config)
    assert (settings.rule, settings.options["alpha"]) == ("cgpo_fix", 1.3)
    assert config.actor_rollout_ref.model.path == "/models/qwen" and config.trainer.total_epochs == 2
    assert config.reward.reward_manager.module.path == "pkg://mdreward.integrations.verl_loop"
    assert json.loads(config.ray_kwargs.ray_init.runtime_env.env_vars[verl_update.SETTINGS_ENV])["rule"] == "cgpo_fix"


def test_famo_weights_come_from_each_domains_mean_reward(actor):
    """FAMO's q_k = (r_max - mean reward_k) / (r_max - r_min) + eps, from verl's token_level_scores."""
    scores = [1.0, -1.0, 1.0, 0.0, -1.0, -1.0]  # math rows 0, 2, 3, 5: mean 0.25; code rows 1, 4: mean -1
    settings = UpdateSettings.from_mapping({"rule": "famo"})
    engine = enable_domain_updates(support.cpu_engine(support.tiny_model(), actor), settings)
    out = engine.train_batch(support.mini_batch(SOURCES, scores=scores), support.loss_function(actor))
    eps = engine.mdreward_rule.eps
    q = {"math": (1 - 0.25) / 2 + eps, "code": (1 + 1) / 2 + eps}
    expected = {n: (1 / q[n]) / sum(1 / v for v in q.values()) for n in q}  # z uniform before any w step
    for name, weight in expected.items():
        assert out["metrics"][f"mdreward/{name}/famo_weight"] == [pytest.approx(weight)]
    with pytest.raises(ValueError, match="token_level_scores"):
        fresh = enable_domain_updates(support.cpu_engine(support.tiny_model(), actor), settings)
        fresh.train_batch(support.mini_batch(SOURCES), support.loss_function(actor))


def test_verls_fp16_gradient_scaler_is_refused(actor):
    """verl unscales gradients by its fp16 loss scale before clipping; the rule's backward is unscaled, so
    running on would shrink every step by the scale (65536 at start): it must stop with an error instead."""
    _, ours = engines(actor, UpdateSettings.from_mapping({"rule": "cgpo"}))
    ours.scaler = torch.amp.GradScaler("cpu")
    before = support.flat_params(ours.module)
    with pytest.raises(ValueError, match="fp16 gradient scaler"):
        ours.train_batch(support.mini_batch(SOURCES), support.loss_function(actor))
    assert torch.equal(support.flat_params(ours.module), before)


@pytest.mark.parametrize("rule", ["pcgrad", "mgs", "gxpo", "cgpo_gxpo", "famo_gxpo"])
def test_whole_gradient_rules_are_refused_with_more_than_one_data_parallel_rank(actor, monkeypatch, rule):
    """verl's default FSDP1 flat parameters are shards that ``refuse_sharded`` does not recognise: the rules that
    need whole gradients must stop before any collective, on every rank alike (the world size is patched to 2)."""
    _, ours = engines(actor, UpdateSettings.from_mapping({"rule": rule}))
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(ValueError, match=f"{rule} needs whole gradients"):
        ours.train_batch(support.mini_batch(SOURCES), support.loss_function(actor))


def test_filler_passes_report_metrics_so_verl_can_aggregate_them_over_ranks(actor):
    """verl's worker gathers each rank's per-micro-batch metrics and ``Metric.aggregate_dp`` needs the same count
    from every rank. A rank short of a domain's micro-batches runs zero-weighted ones: they must report too."""
    from verl.utils.metric.utils import Metric
    from verl.workers.engine.utils import postprocess_batch_func

    from mdreward.integrations.verl_update import VerlMicroBatch, VerlObjective

    engine = support.cpu_engine(support.tiny_model(), actor)
    data = support.mini_batch(SOURCES)

    def rank_metrics(passes):
        objective = VerlObjective(engine, support.loss_function(actor), data)
        for rows in passes:
            mb = objective.filler() if rows is None else VerlMicroBatch(tu.index_select_tensor_dict(data, rows),
                                                                       1.0, len(rows))
            objective(engine.module, mb)
        return postprocess_batch_func(output_lst=objective.outputs, indices=None, data=data)["metrics"]

    full, short = rank_metrics([[0, 2], [3, 5]]), rank_metrics([[0, 2], None])  # the second rank pads one pass
    assert Metric.aggregate_dp([full["actor/pg_loss"], short["actor/pg_loss"]]) is not None
