"""verl 0.9: mdreward's update rules (CGPO, CGPO_fix, joint, PCGrad, FAMO) as the actor's update.

verl 0.9 trains the actor in ``TrainingWorker`` (``verl.workers.engine_workers``): per mini-batch it
calls ``engine.train_batch(data, loss_fn)`` (zero grad, micro-batched forward/backward through
verl's ``ppo_loss``, ``engine.optimizer_step()``: clip, skip a non-finite step, step). Here that one
call becomes the rule's update: the mini-batch's rows are grouped by domain (``data_source``
through the same :class:`~mdreward.integrations.verl.DataSourceTable` as the reward function),
and the rule from :mod:`trainers.updates` runs over them with

- an :class:`~trainers.updates.Objective` whose loss is verl's own ``forward_step`` + loss function
  on verl micro-batches (``ppo_loss`` with its clipping, KL and entropy terms, any ``loss_agg_mode``
  but ``token-sum``), made to return sums over units so the rule does the per-domain normalisation;
- an optimizer whose ``step()`` is verl's ``engine.optimizer_step()`` (FSDP-aware clipping with
  ``actor.optim.clip_grad``), so CGPO's per-domain sub-steps, its scaled and restored learning rate
  and its interpolation act on what verl steps.

Data parallel: domain names are all-gathered over verl's data-parallel group, so every rank hands the
rule the same domains in the same order; the objective carries a ``trainers.updates.DataParallel``,
with which ``shares()`` and ``backward_domain()`` use global counts and make every rank run the same
number of micro-batches per domain, padding with a zero-weighted row (loss mask zeroed) where a rank
has fewer rows of a domain or none, so FSDP's collectives line up. The domain order comes from the
rule, seeded by (scheduler step, mini-batch index): identical on all ranks and across a resume.

Enabling it (see docs/verl.md): ``python -m mdreward.integrations.verl_update`` with verl's usual
Hydra overrides plus ``+mdreward_update.rule=cgpo`` etc. It installs a Ray worker setup hook that
sets ``ActorRolloutRefWorker.actor_worker_cls`` (verl's extension point) to
:class:`DomainUpdateTrainingWorker` in every worker process.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, cast

import torch
import torch.distributed as dist
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.engine.utils import postprocess_batch_func
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from mdreward.integrations.verl import DEFAULT_TABLE, DataSourceTable
from trainers.grpo import Aggregate
from trainers.updates import DataParallel, DomainBatch, UpdateRule, make_rule

#: Environment variable carrying the JSON settings to every Ray worker process.
SETTINGS_ENV = "MDREWARD_VERL_UPDATE"
#: The Hydra config section the launcher reads (and removes before verl sees the config).
CONFIG_KEY = "mdreward_update"
#: Loss aggregations whose loss is a mean over units (tokens or sequences) that can be split by domain.
UNIT_OF_MODE = {"token-mean": "tokens", "seq-mean-token-mean": "sequences", "seq-mean-token-sum": "sequences",
                "seq-mean-token-sum-norm": "sequences"}
#: Rules that need whole gradients, which verl's FSDP shards over the data-parallel ranks.
WHOLE_GRADIENT_RULES = ("pcgrad", "mgs", "gxpo", "cgpo_gxpo", "famo_gxpo")
#: Mini-batch indices within one scheduler step (the seed key is ``scheduler_step * STRIDE + index``).
MINI_BATCH_STRIDE = 100_000


@dataclass(frozen=True)
class UpdateSettings:
    """What ``+mdreward_update.*`` configures.

    ``rule``: joint, cgpo, cgpo_fix, pcgrad or famo; ``options``: the rule's own options (CGPO:
    ``alpha``, ``scaling``, ``order``, ``fixed_order``, ``seed``, ``share_by``, ``domain_weights``,
    ``optimizer_state``; see trainers/updates.py); ``data_source_map``: extra ``{glob: domain}``
    rules, as for the reward function; a data_source no rule matches is its own domain;
    ``reward_range``: FAMO's (lowest, highest) reward.
    """

    rule: str = "cgpo"
    options: Mapping[str, Any] = field(default_factory=dict)
    data_source_map: Mapping[str, str] = field(default_factory=dict)
    reward_range: tuple[float, float] = (-1.0, 1.0)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "UpdateSettings":
        known = {"rule", "data_source_map", "reward_range"}
        rule = str(raw.get("rule", "cgpo"))
        options = {str(k): v for k, v in raw.items() if k not in known}
        if rule in ("cgpo", "cgpo_fix"):
            options.setdefault("phi0_device", "cpu")  # the snapshot stays off the accelerator
        if "max_grad_norm" in options:
            raise ValueError("mdreward_update.max_grad_norm: verl clips every sub-step itself; "
                             "set actor_rollout_ref.actor.optim.clip_grad instead")
        low, high = (float(x) for x in raw.get("reward_range", (-1.0, 1.0)))
        settings = cls(rule, options, {str(k): str(v) for k, v in dict(raw.get("data_source_map") or {}).items()},
                       (low, high))
        settings.build_rule()  # unknown rule or option: fail at start, not at the first update
        return settings

    def build_rule(self) -> UpdateRule:
        return make_rule(self.rule, **dict(self.options))

    def table(self) -> DataSourceTable:
        return DEFAULT_TABLE.with_rules(self.data_source_map)

    def to_json(self) -> str:
        return json.dumps({"rule": self.rule, **dict(self.options), "data_source_map": dict(self.data_source_map),
                           "reward_range": list(self.reward_range)})


# ---- the pieces the rule sees ----------------------------------------------------------------
@dataclass
class VerlMicroBatch:
    """One verl micro-batch of one domain (this rank's rows) and its unit and sample counts."""

    data: TensorDict
    units: float
    samples: int


class VerlObjective:
    """trainers' ``Objective`` over verl: the loss is the engine's ``forward_step`` with verl's loss.

    Each micro-batch carries ``batch_num_tokens = global_batch_size = dp_size = 1``, so verl's
    ``agg_loss`` returns the micro-batch's sum over units; ``backward_domain`` divides by the domain's
    global units and multiplies by the group size (``data_parallel``), which FSDP's gradient average
    divides out again. ``filler()`` is a zero-weighted row for a rank short of a domain's micro-batches.
    """

    def __init__(self, engine: Any, loss_function: Any, data: TensorDict) -> None:
        self.engine = engine
        self.loss_function = loss_function
        self.data = data
        self.outputs: list[dict[str, Any]] = []
        group = engine.get_data_parallel_group()
        no_sync = getattr(engine, "_gradient_sync_context", None)
        self.data_parallel = DataParallel(
            group=group, device=_comm_device(group), grad_average=True,
            no_sync=(lambda model: no_sync(is_last_micro_batch=False)) if no_sync is not None else None)

    def units(self, micro_batch: VerlMicroBatch) -> float:
        return micro_batch.units

    def samples(self, micro_batch: VerlMicroBatch) -> int:
        return micro_batch.samples

    def filler(self) -> VerlMicroBatch:
        return VerlMicroBatch(zero_weighted(self.data), 0.0, 0)

    def __call__(self, model: torch.nn.Module, micro_batch: VerlMicroBatch) -> tuple[Aggregate, dict[str, float]]:
        tu.assign_non_tensor(micro_batch.data, batch_num_tokens=1, global_batch_size=1, dp_size=1)
        loss, output = self.engine.forward_step(micro_batch.data, loss_function=self.loss_function,
                                                forward_only=False)
        output.pop("model_output", None)
        # filler passes too: verl's worker aggregates per-micro-batch metrics over the ranks with
        # Metric.aggregate_dp, which needs every rank to report the same number of values
        self.outputs.append(output)
        return Aggregate(loss, micro_batch.units), {}


class EngineOptimizer:
    """The engine's optimizer as the rule sees it: ``step()`` is verl's ``engine.optimizer_step()``."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.grad_norms: list[float] = []

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.engine.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.engine.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.engine.optimizer.state = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.engine.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.grad_norms.append(float(self.engine.optimizer_step()))


# ---- grouping a mini-batch by domain ---------------------------------------------------------
def row_domains(data: TensorDict, table: DataSourceTable) -> list[str]:
    """The domain of each row: its ``data_source`` through ``table``, else the data_source itself."""
    if "data_source" not in data.keys():
        raise KeyError("the actor's mini-batch has no 'data_source' field, so rows cannot be grouped by domain; "
                       "with trainer.use_v1=true make sure data_source is among the fields sent to the actor, "
                       "or run with trainer.use_v1=false")
    sources = tu.get(data, "data_source")
    return [table.domain_for(str(s)) or str(s) for s in list(sources)]


def _row_tokens(data: TensorDict) -> torch.Tensor:
    mask = data["loss_mask"]
    if getattr(mask, "is_nested", False):
        return torch.stack([m.sum() for m in mask.unbind()]).float()
    return mask.float().sum(-1)


def _comm_device(group: Any) -> torch.device:
    if dist.get_backend(group) == "gloo":
        return torch.device("cpu")
    from verl.utils.device import get_device_id, get_device_name
    return torch.device(get_device_name(), get_device_id())


def global_domains(local: Sequence[str], group: Any) -> list[str]:
    """Sorted union of every rank's domain names (the same list on all ranks)."""
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, sorted(set(local)), group=group)
    return sorted({name for names in gathered for name in names})


def zero_weighted(data: TensorDict) -> TensorDict:
    """A copy of ``data``'s first row with no loss tokens: its forward/backward adds zero gradient."""
    row = tu.index_select_tensor_dict(data, [0])
    mask = row["loss_mask"]
    row["loss_mask"] = (torch.nested.nested_tensor_from_jagged(torch.zeros_like(mask.values()), offsets=mask.offsets())
                        if getattr(mask, "is_nested", False) else torch.zeros_like(mask))
    if "response_mask" in row.keys():
        row["response_mask"] = torch.zeros_like(row["response_mask"])
    return row


def split_rows(rows: list[int], data: TensorDict) -> list[list[int]]:
    """Micro-batches of ``rows`` as verl sizes them: ``micro_batch_size_per_gpu`` rows, or with
    ``use_dynamic_bsz`` greedy packs of at most ``max_token_len_per_gpu`` tokens (one row at least)."""
    if not rows:
        return []
    if tu.get_non_tensor_data(data=data, key="use_dynamic_bsz", default=False):
        budget = int(tu.get_non_tensor_data(data=data, key="max_token_len_per_gpu", default=0))
        lengths = data["input_ids"].offsets().diff().tolist()
        packs: list[list[int]] = [[]]
        used = 0
        for r in rows:
            if packs[-1] and used + lengths[r] > budget:
                packs.append([])
                used = 0
            packs[-1].append(r)
            used += lengths[r]
        return packs
    size = int(tu.get_non_tensor_data(data=data, key="micro_batch_size_per_gpu", default=len(rows)))
    return [rows[i:i + size] for i in range(0, len(rows), max(1, size))]


def split_by_domain(data: TensorDict, table: DataSourceTable, group: Any, loss_agg_mode: str,
                    reward_range: tuple[float, float] = (-1.0, 1.0)) -> list[DomainBatch]:
    """``data``'s rows as one ``DomainBatch`` per domain, the same names in the same order on every rank
    (an empty list where this rank has no row of a domain). A domain with no loss token on any rank
    (every response unscored) sits the update out; ``mean_reward`` (FAMO) is over the group."""
    if loss_agg_mode not in UNIT_OF_MODE:
        raise ValueError(f"loss_agg_mode {loss_agg_mode!r} has no per-unit mean to split by domain; "
                         f"use one of {sorted(UNIT_OF_MODE)}")
    domains = row_domains(data, table)
    tokens = _row_tokens(data)
    units = tokens if UNIT_OF_MODE[loss_agg_mode] == "tokens" else (tokens > 0).float()
    rewards = (data["token_level_scores"].sum(-1).float().tolist() if "token_level_scores" in data.keys()
               else [math.nan] * len(domains))
    names = global_domains(domains, group)
    rows_of = {n: [i for i, d in enumerate(domains) if d == n and tokens[i] > 0] for n in names}
    k = len(names)
    counts = torch.tensor([float(units[rows_of[n]].sum()) if rows_of[n] else 0.0 for n in names]
                          + [float(len(rows_of[n])) for n in names]
                          + [sum(rewards[i] for i in rows_of[n]) for n in names],
                          dtype=torch.float64, device=_comm_device(group))
    dist.all_reduce(counts, group=group)
    batches = []
    for j, name in enumerate(names):
        global_units, global_samples, reward_sum = counts[j].item(), counts[k + j].item(), counts[2 * k + j].item()
        if global_units <= 0:
            continue
        micro_batches = [VerlMicroBatch(tu.index_select_tensor_dict(data, part), float(units[part].sum()), len(part))
                         for part in split_rows(rows_of[name], data)]
        mean_reward = None if math.isnan(reward_sum) else reward_sum / global_samples
        batches.append(DomainBatch(name, micro_batches, mean_reward=mean_reward, reward_range=reward_range))
    if not batches:
        raise ValueError("the actor's mini-batch has no loss token on any rank (every response masked?)")
    return batches


# ---- the engine's mini-batch step as a rule's update -----------------------------------------
class DomainUpdates:
    """Mixed into a verl engine's class: ``train_batch`` runs the configured rule (see module doc)."""

    mdreward_settings: UpdateSettings
    mdreward_rule: UpdateRule
    mdreward_position: tuple[int, int]

    def train_batch(self, data: TensorDict, loss_function: Any) -> dict[str, Any]:
        engine: Any = self
        if getattr(engine, "scaler", None) is not None:
            # verl's fp16 path scales the loss in its own backward and unscales before clipping; the rule's
            # backward is unscaled, so the unscale would shrink every gradient by the loss scale
            raise ValueError("mdreward's update rules do not run with verl's fp16 gradient scaler (the actor's "
                             "fsdp_config.mixed_precision.param_dtype is fp16): use bf16 (verl's default) or fp32")
        tu.maybe_fix_3d_position_ids(data)
        tu.assign_non_tensor(data, sp_size=getattr(engine, "ulysses_sequence_parallel_size", 1))
        group = engine.get_data_parallel_group()
        settings = self.mdreward_settings
        rule = self.mdreward_rule
        ranks = dist.get_world_size(group)
        if rule.name in WHOLE_GRADIENT_RULES and ranks > 1:
            # verl's default FSDP1 flat parameters do not look sharded to trainers.updates.refuse_sharded
            raise ValueError(f"{rule.name} needs whole gradients (to project them, or their norms); under verl's FSDP "
                             f"each of the {ranks} data-parallel ranks holds a shard, so it runs only with one "
                             "data-parallel rank")
        config = getattr(loss_function, "keywords", {}).get("config")
        mode = str(getattr(config, "loss_agg_mode", "token-mean"))
        batches = split_by_domain(data, settings.table(), group, mode, settings.reward_range)
        step = self._mini_batch_key()
        if rule.name == "famo" and "token_level_scores" not in data.keys():
            raise ValueError("famo needs each domain's mean reward, from 'token_level_scores' in the actor's "
                             "mini-batch, and it has none")
        if rule.name == "famo" and step % MINI_BATCH_STRIDE == 0:
            rule.observe(step, batches)
        objective = VerlObjective(engine, loss_function, data)
        optimizer = EngineOptimizer(engine)
        # duck-typed: the rules use param_groups, state, zero_grad and step only
        result = rule.update(engine.module, cast(torch.optim.Optimizer, optimizer), batches, objective, step=step)
        outputs = postprocess_batch_func(output_lst=objective.outputs, indices=None, data=data)
        norms = optimizer.grad_norms
        outputs["metrics"]["grad_norm"] = sum(norms) / len(norms) if norms else math.nan
        # as verl's per-micro-batch metrics: lists, which its worker gathers over ranks and flattens
        metrics: dict[str, float] = {}
        if len(norms) == len(result.order):  # one optimizer step per domain (CGPO)
            for name, norm in zip(result.order, norms):
                metrics[f"mdreward/{name}/grad_norm"] = norm
        for name, stats in result.domains.items():
            for key in ("loss", "units", "famo_weight"):
                if key in stats:
                    metrics[f"mdreward/{name}/{key}"] = stats[key]
        metrics["mdreward/first_domain_index"] = float(sorted(result.domains).index(result.order[0]))
        for key, value in result.extra.items():
            metrics[f"mdreward/{key}"] = value
        outputs["metrics"].update({key: [value] for key, value in metrics.items()})
        return outputs

    def _mini_batch_key(self) -> int:
        """``scheduler_step * MINI_BATCH_STRIDE + index`` of this mini-batch within the scheduler step."""
        scheduler = getattr(self, "lr_scheduler", None)
        epoch = int(getattr(scheduler, "last_epoch", 0) or 0)
        last_epoch, index = getattr(self, "mdreward_position", (epoch, -1))
        index = index + 1 if last_epoch == epoch else 0
        self.mdreward_position = (epoch, index)
        return epoch * MINI_BATCH_STRIDE + index


def enable_domain_updates(engine: Any, settings: UpdateSettings) -> Any:
    """Make ``engine`` (any verl engine instance) run ``settings``' rule in ``train_batch``."""
    base = type(engine)
    if not isinstance(engine, DomainUpdates):
        engine.__class__ = type(f"DomainUpdate{base.__name__}", (DomainUpdates, base), {})
    engine.mdreward_settings = settings
    engine.mdreward_rule = settings.build_rule()
    return engine


class DomainUpdateTrainingWorker(TrainingWorker):
    """verl's actor ``TrainingWorker`` whose engine runs the rule configured in ``$MDREWARD_VERL_UPDATE``."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        raw = os.environ.get(SETTINGS_ENV)
        if not raw:
            raise RuntimeError(f"{SETTINGS_ENV} is not set: start through python -m mdreward.integrations.verl_update")
        enable_domain_updates(self.engine, UpdateSettings.from_mapping(json.loads(raw)))


def install() -> None:
    """Ray worker setup hook: the actor's training worker becomes :class:`DomainUpdateTrainingWorker`."""
    if os.environ.get(SETTINGS_ENV):
        ActorRolloutRefWorker.actor_worker_cls = DomainUpdateTrainingWorker


def prepare_config(config: Any) -> UpdateSettings:
    """Take ``mdreward_update`` out of verl's config and route it to the workers (env + setup hook)."""
    from omegaconf import OmegaConf, open_dict

    section = config.get(CONFIG_KEY)
    raw = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    if not isinstance(raw, dict):
        raise TypeError(f"{CONFIG_KEY} must be a mapping, got {type(raw).__name__}")
    settings = UpdateSettings.from_mapping({str(k): v for k, v in raw.items()})
    with open_dict(config):
        config.pop(CONFIG_KEY, None)
        ray_init = config.ray_kwargs.ray_init
        if ray_init.get("runtime_env") is None:
            ray_init.runtime_env = {}
        if ray_init.runtime_env.get("env_vars") is None:
            ray_init.runtime_env.env_vars = {}
        ray_init.runtime_env.env_vars[SETTINGS_ENV] = settings.to_json()
        ray_init.runtime_env.worker_process_setup_hook = f"{__name__}.install"
    return settings


def compose_config(overrides: Sequence[str]) -> Any:
    """verl's ``ppo_trainer`` config with command-line ``overrides``, as ``verl.trainer.main_ppo`` composes it."""
    import verl.trainer.main_ppo as main_ppo
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(main_ppo.__file__), "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mdreward.integrations.verl_update <verl overrides> +mdreward_update.rule=cgpo ...``."""
    import verl.trainer.main_ppo as main_ppo

    config = compose_config(sys.argv[1:] if argv is None else argv)
    settings = prepare_config(config)
    print(f"mdreward: actor update rule {settings.rule} {dict(settings.options)}", flush=True)
    main_ppo.main(config)  # hydra.main passes a composed config straight through


if __name__ == "__main__":
    main()
