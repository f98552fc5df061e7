"""Our update rules (joint, CGPO, CGPO_fix, FAMO, PCGrad) inside TRL's ``GRPOTrainer``, on accelerate.

``CGPOTrainer(rule="cgpo", ...)`` is a ``GRPOTrainer``: TRL generates (HF generate, or vLLM colocate /
server), scores with the reward functions (mdreward's, from :mod:`mdreward.integrations.trl`), computes
the group advantages and its GRPO loss. What changes is the optimizer step. The micro-batches of one
optimizer step (the accumulation window) are collected, regrouped by the dataset's domain column and
handed to the rule, which runs its per-domain sub-steps itself (CGPO: K steps with the learning rate
scaled by the domain's share and restored, then ``phi_0 + alpha (phi_K - phi_0)``, ``phi_0`` on CPU).
The Trainer's own clip/step afterwards find no gradient and do nothing; its scheduler steps once per
mini-batch as usual; checkpoints (``save_pretrained``) follow TRL's normal save path.

The loss of every sub-step is TRL's own ``_compute_loss`` (so its loss types, clipping, KL, vLLM
importance-sampling correction all apply), turned into a sum over units; the old policy of every
sub-step is the rollout log-probabilities stored at generation time (forced on here: plain TRL skips
them when on-policy and uses ``logp.detach()``, which is wrong after the first domain step).

Distributed (DDP, FSDP2): domain names, counts and rewards are reduced over the ranks, every rank runs
the same passes (zero-weighted for a domain it holds no row of), see :class:`trainers.updates.DataParallel`.
DeepSpeed and FSDP1 are refused (their engines own the parameters / the optimizer step).
"""
from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

import torch
from accelerate.utils import DistributedType, gather_object
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from mdreward.registry import UnknownName

from .grpo import Aggregate
from .updates import DataParallel, DomainBatch, UpdateRule, make_rule

#: TRL loss types whose loss is a mean over tokens (the rest average over sequences).
TOKEN_LOSSES = ("bnpo", "dapo", "cispo", "vespo")
#: TRL loss types normalised by the generation batch's token count (``num_items_in_batch``).
GLOBAL_TOKEN_LOSSES = ("dapo", "cispo", "vespo")

Batch = dict[str, Any]


def batch_rows(batch: Batch) -> int:
    return int(batch["completion_ids"].shape[0])


def take_rows(batch: Batch, rows: Sequence[int]) -> Batch:
    """The given rows of a TRL batch (per-row tensors and lists; scalars such as ``num_items_in_batch`` as they are)."""
    n = batch_rows(batch)
    index = torch.as_tensor(list(rows), dtype=torch.long)
    out: Batch = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
            out[key] = value[index.to(value.device)]
        elif isinstance(value, list) and len(value) == n:
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out


#: Per-row 1/0 marker our micro-batches carry: a real row, or padding (zero loss mask).
REAL = "mdreward_real_row"


def padded_rows(batch: Batch, rows: Sequence[int], size: int) -> Batch:
    """``rows`` of ``batch`` padded to ``size`` rows with copies of a row whose loss mask is zero.

    TRL gathers per-row metrics across ranks inside its loss, so every rank's micro-batch must have
    the same number of rows in every pass; padding rows add nothing to the loss or to TRL's metrics.
    """
    real = len(rows)
    out = take_rows(batch, list(rows) + [rows[0] if rows else 0] * (size - real))
    keep = torch.zeros(size, dtype=out["completion_mask"].dtype, device=out["completion_mask"].device)
    keep[:real] = 1
    out["completion_mask"] = out["completion_mask"] * keep.unsqueeze(1)
    out[REAL] = keep
    return out


def join_rows(batches: Sequence[Batch]) -> Batch:
    """One batch from the micro-batches of an accumulation window (all cut from one generation batch)."""
    if len(batches) == 1:
        return batches[0]
    out: Batch = {}
    for key, first in batches[0].items():
        values = [b[key] for b in batches]
        if isinstance(first, torch.Tensor) and first.dim() >= 1 and first.shape[0] == batch_rows(batches[0]):
            if len({v.shape[1:] for v in values}) > 1:
                raise ValueError(f"micro-batches of one optimizer step have different {key!r} widths "
                                 f"{[tuple(v.shape) for v in values]}: they come from different generation batches")
            out[key] = torch.cat(values)
        elif isinstance(first, list):
            out[key] = [x for v in values for x in v]
        else:
            out[key] = first
    return out


class TRLObjective:
    """The update rules' ``Objective``: TRL's GRPO loss of a micro-batch as a sum over its units.

    ``GRPOTrainer._compute_loss`` returns a mean (over sequences or tokens, per loss type) divided by
    the accumulation steps; the trainer sets the latter to 1 while a rule runs, and the mean is
    multiplied back by its normaliser, so ``total / units`` summed over a domain's micro-batches is
    exactly the domain's loss under TRL's aggregation.
    """

    def __init__(self, trainer: GRPOTrainer, data_parallel: DataParallel | None, filler: Batch) -> None:
        self.trainer = trainer
        self.data_parallel = data_parallel
        self._filler = filler

    def _mask(self, mb: Batch) -> torch.Tensor:
        mask = mb["completion_mask"]
        return mask if "tool_mask" not in mb else mask * mb["tool_mask"]

    def units(self, mb: Batch) -> float:
        if self.trainer.loss_type in TOKEN_LOSSES:
            return float(self._mask(mb).sum())
        return float(self.samples(mb))

    def samples(self, mb: Batch) -> int:
        return int(mb[REAL].sum()) if REAL in mb else batch_rows(mb)

    def filler(self) -> Batch:
        """Rows with an all-zero loss mask: a pass that contributes nothing but runs the collectives."""
        return self._filler

    def normaliser(self, mb: Batch) -> torch.Tensor | float:
        t: Any = self.trainer
        if t.loss_type == "bnpo":
            return self._mask(mb).sum().clamp(min=1.0)
        if t.loss_type in GLOBAL_TOKEN_LOSSES:
            return mb["num_items_in_batch"].clamp(min=1.0) / t.accelerator.num_processes / t.args.steps_per_generation
        return float(batch_rows(mb))  # grpo, sapo, luspo: mean over all rows (padding too); dr_grpo: / max length

    def __call__(self, model: torch.nn.Module, mb: Batch) -> tuple[Aggregate, dict[str, float]]:
        with self.trainer.compute_loss_context_manager():  # the Trainer's autocast, as around its own loss
            loss = self.trainer._compute_loss(model, mb)
        return Aggregate(loss * self.normaliser(mb), self.units(mb)), {}


class CGPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose optimizer step is one of our update rules, per domain.

    ``rule``: a name for :func:`trainers.updates.make_rule` (``joint``, ``cgpo``, ``cgpo_fix``, ``famo``,
    ``pcgrad``, or any registered rule) with ``rule_options``, or a rule object. Unless given in
    ``rule_options``: ``seed`` is ``args.seed``, ``max_grad_norm`` is ``args.max_grad_norm`` (per
    domain step), CGPO's ``phi0_device`` is ``"cpu"``. ``domain_column``: the dataset column naming each
    row's domain (the one mdreward's reward functions route on). ``reward_ranges``: FAMO's
    ``(lowest, highest)`` reward per domain (default: from the mdreward reward table, else (-1, 1)).
    """

    def __init__(self, *args: Any, rule: str | UpdateRule = "cgpo", rule_options: Mapping[str, Any] | None = None,
                 domain_column: str = "domain", reward_ranges: Mapping[str, tuple[float, float]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refuse_unsupported()
        options = dict(rule_options or {})
        self.rule: UpdateRule = make_rule(rule, **options) if isinstance(rule, str) else rule
        if isinstance(rule, str):
            defaults = {"seed": self.args.seed, "phi0_device": "cpu",
                        "max_grad_norm": self.args.max_grad_norm if self.args.max_grad_norm > 0 else None}
            for key, value in defaults.items():
                if key not in options and hasattr(self.rule, key):
                    setattr(self.rule, key, value)
        self.domain_column = domain_column
        self._check_domain_column()
        self.reward_ranges = dict(reward_ranges or {})
        self._window: list[Batch] = []
        self._generations = 0
        self._observed = -1
        self._rewards_per_func: torch.Tensor | None = None

    # ---- set-up checks -----------------------------------------------------------------------
    def _refuse_unsupported(self) -> None:
        kind = self.accelerator.distributed_type
        if kind == DistributedType.DEEPSPEED or self.is_deepspeed_enabled:
            raise ValueError("CGPOTrainer does not run under DeepSpeed: its engine owns the optimizer step, so the "
                             "per-domain sub-steps cannot be taken; use DDP or FSDP2 (accelerate's fsdp_version: 2)")
        if kind == DistributedType.FSDP and not getattr(self.accelerator, "is_fsdp2", False):
            raise ValueError("CGPOTrainer supports FSDP2 only (fsdp_version: 2); FSDP1's flat parameters are not "
                             "handled")
        if self._entropy_bonus_enabled or self.aux_loss_enabled:
            raise ValueError("CGPOTrainer does not split TRL's entropy bonus or router aux loss by domain: set "
                             "entropy_coef=0 (no adaptive entropy) and router_aux_loss_coef=0")
        args: Any = self.args
        if getattr(args, "fp16", False):
            raise ValueError("CGPOTrainer does not run with fp16: its per-domain sub-steps backpropagate and step "
                             "outside accelerate's gradient scaler, so fp16 gradients would go unscaled; use bf16 "
                             "or fp32")
        if args.steps_per_generation % args.gradient_accumulation_steps:
            raise ValueError(f"steps_per_generation ({args.steps_per_generation}) must be a multiple of "
                             f"gradient_accumulation_steps ({args.gradient_accumulation_steps}): one optimizer "
                             "step's rows must come from one generation batch")

    def _check_domain_column(self) -> None:
        """Every row of a map-style train dataset names its domain (checked once, the same on every rank,
        rather than as an error on one rank mid-step); an iterable dataset is checked batch by batch."""
        data: Any = self.train_dataset
        names = getattr(data, "column_names", None)
        if data is None or names is None or not hasattr(data, "__len__"):
            return
        if self.domain_column not in names:
            raise ValueError(f"train_dataset has no {self.domain_column!r} column (it has {list(names)}): "
                             "CGPOTrainer needs each row's domain (domain_column=...)")
        missing = [i for i, value in enumerate(data[self.domain_column]) if value is None]
        if missing:
            raise ValueError(f"train_dataset rows {missing[:5]} ({len(missing)} in all) have no "
                             f"{self.domain_column!r} value: CGPOTrainer needs each row's domain")

    # ---- generation: carry domains, rewards and the rollout log-probabilities ----------------
    def _training(self) -> bool:
        return bool(getattr(self.model, "training", False))

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _generate_and_score_completions(self, inputs: Any) -> Any:
        output = super()._generate_and_score_completions(inputs)
        if not self._training():
            return output
        missing = [i for i, row in enumerate(inputs) if row.get(self.domain_column) is None]
        if missing:
            raise ValueError(f"rows {missing[:5]} of this batch have no {self.domain_column!r} column value: "
                             "CGPOTrainer needs each row's domain")
        output["domain"] = [str(row[self.domain_column]) for row in inputs]
        output["reward"] = self._local_rewards(len(inputs))
        if output.get("old_per_token_logps") is None:
            output["old_per_token_logps"] = self._rollout_logps(output)
        self._generations += 1
        return output

    def _local_rewards(self, n: int) -> torch.Tensor:
        """Each local row's weighted reward (NaN where every reward function returned None)."""
        assert self._rewards_per_func is not None
        per_func = self._rewards_per_func
        weights = self.reward_weights.to(per_func.device).unsqueeze(0)
        rewards = (per_func * weights).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        start = self.accelerator.process_index * n
        return rewards[start:start + n]

    def _rollout_logps(self, output: Batch) -> torch.Tensor:
        """The policy's log-probabilities of the sampled tokens, before any update of this step."""
        if any(key in output for key in ("pixel_values", "image_grid_thw", "num_images")):
            raise ValueError("CGPOTrainer needs stored rollout log-probs; for multimodal batches TRL computes them "
                             "only with vLLM importance sampling on (use_vllm=True)")
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        model: Any = self.model
        checkpointing: Any = self.args.gradient_checkpointing_kwargs
        with torch.no_grad(), disable_gradient_checkpointing(model, checkpointing):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, ids, mask, output["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size)
        return logps

    # ---- the optimizer step ------------------------------------------------------------------
    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        started = time.perf_counter()
        model.train()
        self._window.append(self._prepare_inputs(inputs))
        self._step += 1
        loss = torch.zeros((), device=self.accelerator.device)
        if self.accelerator.sync_gradients:  # the window's last micro-batch: run the rule
            loss = self._update(model)
        self._current_train_step_time += time.perf_counter() - started
        if self._step % self.current_gradient_accumulation_steps == 0:
            self._metrics["train"]["step_time"].append(self._current_train_step_time)
            self._current_train_step_time = 0.0
        return loss

    def _data_parallel(self) -> DataParallel | None:
        if self.accelerator.num_processes == 1:
            return None
        return DataParallel(device=self.accelerator.device, grad_average=True,
                            no_sync=lambda m: self.accelerator.no_sync(m))

    def _domain_batches(self, batch: Batch) -> tuple[list[DomainBatch], dict[str, int]]:
        """Every domain of the global mini-batch (same names, same order on all ranks) with its local rows."""
        rewards = batch["reward"].detach().float().cpu()
        local: dict[str, list[int]] = {}
        for i, name in enumerate(batch["domain"]):
            local.setdefault(name, []).append(i)
        summary = {name: (len(rows), float(rewards[rows].nansum()), int((~rewards[rows].isnan()).sum()))
                   for name, rows in local.items()}
        everything = gather_object([summary]) if self.accelerator.num_processes > 1 else [summary]
        counts: Counter[str] = Counter()
        most: Counter[str] = Counter()  # the largest number of rows of the domain on one rank
        reward_sums: dict[str, float] = defaultdict(float)
        scored: Counter[str] = Counter()
        for part in everything:
            for name, (n, total, m) in part.items():
                counts[name] += n
                most[name] = max(most[name], int(n))
                reward_sums[name] += total
                scored[name] += m
        batches = []
        for name in sorted(counts):
            # as few passes as per_device_train_batch_size allows, rows spread evenly over them: every
            # rank's micro-batches of the domain have the same width (TRL gathers per-row metrics)
            passes = -(-most[name] // self.args.per_device_train_batch_size)
            width = -(-most[name] // passes)
            rows = local.get(name, [])
            micro = [padded_rows(batch, rows[i:i + width], width) for i in range(0, len(rows), width)]
            mean = reward_sums[name] / scored[name] if scored[name] else None
            batches.append(DomainBatch(name, micro, mean_reward=mean, reward_range=self._reward_range(name),
                                       filler=padded_rows(batch, [], width)))
        return batches, dict(counts)

    def _reward_range(self, domain: str) -> tuple[float, float]:
        if domain in self.reward_ranges:
            return self.reward_ranges[domain]
        for func in self.reward_funcs:
            scorer = getattr(func, "scorer", None)
            if scorer is None:
                continue
            try:
                values = list(scorer.registry.get(scorer.registry.resolve(domain)).table.values.values())
            except (UnknownName, AttributeError, KeyError):  # not an mdreward domain: the default range
                continue
            if values and max(values) > min(values):
                return float(min(values)), float(max(values))
        return -1.0, 1.0

    def _update(self, model: torch.nn.Module) -> torch.Tensor:
        window, self._window = self._window, []
        batch = join_rows(window)
        domain_batches, counts = self._domain_batches(batch)
        filler = padded_rows(batch, [], self.args.per_device_train_batch_size)
        objective = TRLObjective(self, self._data_parallel(), filler)
        step = self.state.global_step
        if self._generations != self._observed:  # once per rollout batch (FAMO's progress signal)
            self.rule.observe(step, domain_batches)
            self._observed = self._generations
        optimizer: Any = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate's wrapper -> torch's
        accumulation, self.current_gradient_accumulation_steps = self.current_gradient_accumulation_steps, 1
        started = time.perf_counter()
        try:
            result = self.rule.update(model, optimizer, domain_batches, objective, step=step, scheduler=None)
        finally:
            self.current_gradient_accumulation_steps = accumulation
            # some rules leave their last gradient in place: the Trainer's own clip/step must find none
            optimizer.zero_grad(set_to_none=True)
        metrics = self._metrics["train"]
        metrics["update/time_s"].append(time.perf_counter() - started)
        total = sum(counts.values())
        loss = 0.0
        for name, stats in result.domains.items():
            share = counts[name] / total
            loss += share * stats["loss"]
            metrics[f"update/{name}/share"].append(share)
            for key in ("loss", "grad_norm", "famo_weight"):
                if key in stats:
                    metrics[f"update/{name}/{key}"].append(float(stats[key]))
            metrics[f"update/{name}/position"].append(float(result.order.index(name)))
        for key, value in result.extra.items():
            metrics[f"update/{key}"].append(float(value))
        return torch.tensor(loss, device=self.accelerator.device)

    # ---- checkpoints: the rule's state beside TRL's ------------------------------------------
    def _rule_state_path(self, folder: str) -> str:
        return os.path.join(folder, f"update_rule_rank{self.accelerator.process_index}.pt")

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        state = self.rule.state_dict()
        if state:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            torch.save(state, self._rule_state_path(folder))

    def _load_optimizer_and_scheduler(self, checkpoint: Any) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and os.path.exists(self._rule_state_path(checkpoint)):
            self.rule.load_state_dict(torch.load(self._rule_state_path(checkpoint), weights_only=False))


__all__ = ["CGPOTrainer", "TRLObjective"]
