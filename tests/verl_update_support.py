"""verl's own actor pieces on CPU for the update-rule tests: its Hydra actor config, its FSDP engine
class (``FSDPEngineWithLMHead``: ``forward_step``, ``forward_backward_batch``, ``optimizer_step``,
``train_batch``) over a plain tiny Qwen2 module, its ``ppo_loss``, and mini-batches built the way its
trainer builds them (``DataProto`` -> ``to_tensordict`` -> ``left_right_2_no_padding``).

The engine is made without ``FSDPEngine.__init__`` (as verl's VeOmni engine subclass does), since
that one builds CUDA device meshes and FSDP wrappers; every method the update path calls is verl's.
Also the target of the 2-process test's spawned ranks.
"""
from __future__ import annotations

import os
from datetime import timedelta
from functools import partial
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

VOCAB = 64
LR = 0.5


def verl_actor_config(*overrides: str) -> Any:
    """verl's ``ActorConfig`` from its own Hydra files; SGD without effective clipping, so that a wrong
    loss scale shows in the parameters (Adam's first step and clipping would hide it)."""
    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name="ppo_trainer", overrides=[
            "actor_rollout_ref.model.path=/unused", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=4", f"actor_rollout_ref.actor.optim.lr={LR}",
            "actor_rollout_ref.actor.optim.optimizer=SGD", "actor_rollout_ref.actor.optim.weight_decay=0.0",
            "actor_rollout_ref.actor.optim.clip_grad=1000.0", *overrides])
    return omega_conf_to_dataclass(config.actor_rollout_ref.actor)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def cpu_engine(module: torch.nn.Module, actor_config: Any) -> Any:
    """verl's ``FSDPEngineWithLMHead`` on a plain (or DDP-wrapped) CPU module, fp32, no padding removal."""
    import verl.workers.engine.fsdp.transformer_impl as impl
    from verl.utils import torch_functional as verl_F
    from verl.workers.config.optimizer import build_optimizer

    impl.get_device_id = lambda: "cpu"  # verl's platform layer knows only accelerators
    engine = object.__new__(impl.FSDPEngineWithLMHead)
    engine.rank = dist.get_rank()
    engine.model_config, engine.engine_config, engine.optimizer_config = None, actor_config.engine, actor_config.optim
    engine.module = module
    engine.optimizer = build_optimizer(module.parameters(), actor_config.optim)
    engine.use_remove_padding, engine.ulysses_sequence_parallel_size = False, 1
    engine.ulysses_device_mesh, engine.use_ulysses_sp, engine.scaler = None, False, None
    engine._autocast_dtype, engine._qat_enabled, engine.pad_to_length = torch.float32, False, False
    engine.compute_entropy_from_logits = verl_F.entropy_from_logits
    return engine


def mini_batch(data_sources: Sequence[str], seed: int = 1, prompt_len: int = 3, response_len: int = 5,
               scores: Sequence[float] | None = None) -> Any:
    """A verl actor mini-batch (TensorDict, no padding) with random tokens, old log-probs, advantages."""
    from verl import DataProto
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    n = len(data_sources)
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(1, VOCAB, (n, prompt_len), generator=gen)
    responses = torch.randint(1, VOCAB, (n, response_len), generator=gen)
    lengths = torch.randint(1, response_len + 1, (n,), generator=gen)
    response_mask = (torch.arange(response_len)[None] < lengths[:, None]).long()
    attention = torch.cat([torch.ones(n, prompt_len, dtype=torch.long), response_mask], 1)
    tensors = {"prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
               "attention_mask": attention, "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
               "response_mask": response_mask, "old_log_probs": -torch.rand(n, response_len, generator=gen) * 3 - 1,
               "advantages": torch.randn(n, 1, generator=gen).expand(n, response_len).contiguous()}
    if scores is not None:
        tensors["token_level_scores"] = torch.zeros(n, response_len)
        tensors["token_level_scores"][:, 0] = torch.tensor(scores, dtype=torch.float32)
    proto = DataProto.from_dict(tensors=tensors, non_tensors={"data_source": np.array(list(data_sources), dtype=object)},
                                meta_info={"temperature": 1.0})
    data = left_right_2_no_padding(proto.to_tensordict())
    tu.assign_non_tensor(data, global_batch_size=n, calculate_entropy=False, use_remove_padding=False,
                         use_dynamic_bsz=False, micro_batch_size_per_gpu=2, max_token_len_per_gpu=64,
                         use_fused_kernels=False)
    return data


def loss_function(actor_config: Any) -> Any:
    from verl.workers.utils.losses import ppo_loss

    return partial(ppo_loss, config=actor_config)


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


# ---- the 2-process test ----------------------------------------------------------------------
#: The global mini-batch's data sources; rank 0 takes rows 0-3, rank 1 rows 4-7 (no code rows on rank 1).
GLOBAL_SOURCES = ["math__a", "math__a", "codegen__b", "codegen__b", "math__a", "math__a", "math__a", "math__a"]
STEPS = 2


def rank_rows(data: Any, rank: int, world: int) -> Any:
    from verl.utils import tensordict_utils as tu

    per_rank = len(GLOBAL_SOURCES) // world
    return tu.index_select_tensor_dict(data, list(range(rank * per_rank, (rank + 1) * per_rank)))


def cgpo_settings() -> Any:
    from mdreward.integrations.verl_update import UpdateSettings

    return UpdateSettings.from_mapping({"rule": "cgpo", "alpha": 1.5, "seed": 3})


def rank_main(rank: int, world: int, out_dir: str) -> None:
    """One data-parallel rank: DDP over the tiny model, CGPO on this rank's rows for ``STEPS`` mini-batches."""
    from mdreward.integrations.verl_update import enable_domain_updates

    # a file rendezvous: no TCP port to pick (and lose to another process) before the ranks bind it
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    try:
        actor = verl_actor_config()
        module = torch.nn.parallel.DistributedDataParallel(tiny_model())
        engine = enable_domain_updates(cpu_engine(module, actor), cgpo_settings())
        for step in range(STEPS):
            engine.train_batch(rank_rows(mini_batch(GLOBAL_SOURCES, seed=step), rank, world), loss_function(actor))
        torch.save(flat_params(module.module), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
