"""CAPO: curvature-aware masking of the tokens that would make an update unstable, around any update rule.

Melo, Abate and Gal, "Stabilizing Policy Gradients for Sample-Efficient Reinforcement Learning in
LLM Reasoning" (arXiv 2510.00819), as the authors' code (github.com/luckeciano/stable-pg-llm) computes
it for its CAPO recipe (token level). Under a last-layer model (only the LM head ``W`` moves, logits
``z = W h / T``) each response token t has a closed-form policy gradient ``g_t = A_t (e_a - pi_t) h_t^T``
and an optimizer-model update direction ``d_t`` (Adam with per-row moments of the LM head, or SGD).
With the learning rate ``lr``, CAPO predicts for the step along ``d_t``

    gain_t = lr <g_t, d_t> + 1/2 lr^2 A_t ((v.u)^2 - u^T (diag(pi) - pi pi^T) u)   (2nd-order objective change)
    kl_t   = 1/2 lr^2 (v.u)^2                                                      (2nd-order KL, sampled Fisher)

with ``v = e_a - pi``, ``u = d_t h_t`` (the logit change per unit step), and masks the token out of the
loss when ``kl_t >= fisher_tau`` or ``|gain_t| >= hessian_tau`` (``symmetric``; else unless
``0 <= gain_t < hessian_tau``). Decisions where the paper and code are silent: docs/trainers.md, "CAPO".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence

import torch

from .grpo import Aggregate, grpo_loss
from .rollout import GRPOObjective, MicroBatch, response_logprobs
from .updates import DomainBatch, UpdateResult, UpdateRule, make_rule

OptimizerModel = Literal["adam", "sgd"]


@dataclass(frozen=True)
class CAPOSettings:
    """CAPO's thresholds and curvature model. Defaults: the authors' CAPO recipe (GRPO, Adam)."""

    fisher_tau: float | None = 1e-4        # None or 0: no KL criterion
    hessian_tau: float | None = 0.01       # None or 0: no objective-change criterion
    symmetric: bool = True                 # |gain| < tau; False: 0 <= gain < tau
    optimizer_model: OptimizerModel = "adam"
    top_k: int | None = 50                 # vocabulary rows per token (top-k logits + the sampled token); None: all
    max_masked_fraction: float | None = None  # ours, off by default: cap per micro-batch, worst tokens first
    chunk_tokens: int = 64                 # tokens per block of the Adam-direction computation (memory bound)

    def __post_init__(self) -> None:
        for name in ("fisher_tau", "hessian_tau"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"CAPO {name} must be a non-negative number (0 or None: off), got {value!r}")
        if self.optimizer_model not in ("adam", "sgd"):
            raise ValueError(f"CAPO optimizer_model must be 'adam' or 'sgd', got {self.optimizer_model!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"CAPO top_k must be >= 1 or None, got {self.top_k!r}")
        if self.max_masked_fraction is not None and not 0 <= self.max_masked_fraction <= 1:
            raise ValueError(f"CAPO max_masked_fraction must be in [0, 1], got {self.max_masked_fraction!r}")
        if self.chunk_tokens < 1:
            raise ValueError(f"CAPO chunk_tokens must be >= 1, got {self.chunk_tokens!r}")


@dataclass(frozen=True)
class TokenCurvature:
    """Per-token predictions [N] and what rebuilds each token's gradient ``g_t = A_t v_t h_t^T`` [k, H]."""

    gain: torch.Tensor
    kl: torch.Tensor
    rows: torch.Tensor        # [N, k] the vocabulary row of each slot
    score: torch.Tensor       # [N, k] v_t = e_a - pi_t on those rows
    advantage: torch.Tensor   # [N]
    hidden: torch.Tensor      # [N, H] (divided by the temperature)

    def gradients(self, tokens: torch.Tensor | slice) -> torch.Tensor:
        """g_t of the chosen tokens [n, k, H] (built on demand: N k H values can be large)."""
        a, v, h = self.advantage[tokens], self.score[tokens], self.hidden[tokens]
        return a[:, None, None] * v.unsqueeze(-1) * h.unsqueeze(1)


@dataclass
class AdamRowModel:
    """The authors' optimizer model: Adam moments per LM-head row, fed with per-row mean gradients.

    Directions use the prospective moments of the token's own gradient (``m' = b1 m + (1-b1) g``,
    ``v' = b2 v + (1-b2) g^2``, bias-corrected at step ``t+1``). ``commit`` folds the mean gradient of
    each row over the kept tokens of one mini-batch into the moments (rows not seen keep theirs).
    """

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    m: torch.Tensor | None = None
    v: torch.Tensor | None = None
    t: int = 0
    _sums: torch.Tensor | None = field(default=None, repr=False)
    _counts: torch.Tensor | None = field(default=None, repr=False)

    def ensure(self, shape: torch.Size, device: torch.device) -> None:
        if self.m is None or self.v is None:
            self.m, self.v = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
        elif self.m.shape != shape:
            raise ValueError(f"CAPO's optimizer model has LM-head shape {tuple(self.m.shape)}, the model {tuple(shape)}")
        else:
            self.m, self.v = self.m.to(device), self.v.to(device)

    def directions(self, grads: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        assert self.m is not None and self.v is not None  # ensure() ran
        b1, b2 = self.betas
        m = self.m[rows] * b1 + (1 - b1) * grads
        v = self.v[rows] * b2 + (1 - b2) * grads * grads
        step = self.t + 1
        return (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + self.eps)

    def accumulate(self, curv: "TokenCurvature", tokens: torch.Tensor, chunk: int) -> None:
        """Add the gradients of ``tokens`` (indices into ``curv``) to the per-row sums of this mini-batch."""
        assert self.m is not None
        if self._sums is None or self._counts is None:
            self._sums = torch.zeros_like(self.m)
            self._counts = torch.zeros(self.m.shape[0], device=self.m.device)
        for lo in range(0, tokens.numel(), chunk):
            part = tokens[lo:lo + chunk]
            rows = curv.rows[part].reshape(-1)
            self._sums.index_add_(0, rows, curv.gradients(part).reshape(rows.numel(), -1))
            self._counts.index_add_(0, rows, torch.ones(rows.numel(), device=rows.device))

    def commit(self) -> None:
        """One optimizer-model step from what ``accumulate`` gathered (the step count advances even when
        every token was masked, as in the authors' code)."""
        if self.m is None or self.v is None:
            return
        if self._sums is not None and self._counts is not None:
            seen = self._counts > 0
            mean = self._sums[seen] / self._counts[seen].unsqueeze(-1)
            b1, b2 = self.betas
            self.m[seen] = self.m[seen] * b1 + (1 - b1) * mean
            self.v[seen] = self.v[seen] * b2 + (1 - b2) * mean * mean
        self.t += 1
        self._sums = self._counts = None

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m, "v": self.v, "t": self.t}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m, self.v, self.t = state.get("m"), state.get("v"), int(state.get("t", 0))


def vocabulary_rows(logits: torch.Tensor, actions: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """[N, k] rows per token: the top-k logits, the sampled token replacing the k-th when it is not among them."""
    n, vocab = logits.shape
    if top_k is None or top_k >= vocab:
        return torch.arange(vocab, device=logits.device).expand(n, vocab)
    rows = logits.topk(top_k, dim=-1).indices
    absent = ~(rows == actions.unsqueeze(-1)).any(-1)
    rows[absent, -1] = actions[absent]
    return rows


def token_curvature(hidden: torch.Tensor, logits: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor,
                    lr: float, settings: CAPOSettings, adam: AdamRowModel | None) -> TokenCurvature:
    """CAPO's per-token predictions for N tokens: ``hidden`` [N, H] and ``logits`` [N, V], both already
    divided by the sampling temperature, ``actions`` [N] sampled ids, ``advantages`` [N]."""
    rows = vocabulary_rows(logits, actions, settings.top_k)
    pi = torch.softmax(logits.gather(1, rows), -1)                        # renormalised over the rows
    v = (rows == actions.unsqueeze(-1)).to(pi.dtype) - pi                 # e_a - pi
    a = advantages.to(pi.dtype)
    curv = TokenCurvature(gain=a, kl=a, rows=rows, score=v, advantage=a, hidden=hidden)
    if adam is None:                                                     # SGD: d = g, closed form
        sq = (hidden * hidden).sum(-1)
        g_dot_d = a * a * (v * v).sum(-1) * sq
        u = (a * sq).unsqueeze(-1) * v
    else:
        g_dot_d = torch.empty_like(a)
        u = torch.empty_like(v)
        for lo in range(0, rows.shape[0], settings.chunk_tokens):
            part = slice(lo, lo + settings.chunk_tokens)
            grads = curv.gradients(part)
            d = adam.directions(grads, rows[part])
            g_dot_d[part] = (grads * d).sum((1, 2))
            u[part] = (d * hidden[part].unsqueeze(1)).sum(-1)
    s = (v * u).sum(-1)                                                   # <grad log pi_a, d>
    u_fisher_u = (pi * u * u).sum(-1) - (pi * u).sum(-1) ** 2            # u^T (diag(pi) - pi pi^T) u
    gain = lr * g_dot_d + 0.5 * lr * lr * a * (s * s - u_fisher_u)
    return replace(curv, gain=gain, kl=0.5 * lr * lr * s * s)


@dataclass(frozen=True)
class TokenMask:
    """Which of N tokens CAPO masks, and which criterion each token broke (before any cap)."""

    masked: torch.Tensor
    fisher: torch.Tensor
    hessian: torch.Tensor


def curvature_mask(gain: torch.Tensor, kl: torch.Tensor, settings: CAPOSettings) -> TokenMask:
    """The masking rule: ``kl >= fisher_tau`` or the gain outside its band; at most ``max_masked_fraction``
    of the N tokens (when set), keeping masked those that exceed their threshold by the largest factor."""
    none = torch.zeros_like(gain, dtype=torch.bool)
    score = torch.zeros_like(gain)
    fisher = none
    if settings.fisher_tau:
        fisher = kl >= settings.fisher_tau
        score = torch.maximum(score, kl / settings.fisher_tau)
    hessian = none
    if settings.hessian_tau:
        tau = settings.hessian_tau
        hessian = gain.abs() >= tau if settings.symmetric else (gain < 0) | (gain >= tau)
        ratio = gain.abs() / tau if settings.symmetric else torch.where(gain < 0, torch.inf, gain / tau)
        score = torch.maximum(score, ratio)
    masked = fisher | hessian
    if settings.max_masked_fraction is not None:
        limit = math.floor(settings.max_masked_fraction * gain.numel() + 1e-9)
        if int(masked.sum()) > limit:
            worst = torch.where(masked, score, -torch.inf).topk(limit).indices
            masked = none.clone()
            masked[worst] = True
    return TokenMask(masked, fisher, hessian)


class CAPOObjective:
    """A ``GRPOObjective`` whose loss leaves out the tokens CAPO masks (one mini-batch's learning rate)."""

    def __init__(self, base: GRPOObjective, rule: "CAPO", lr: float, domain_of: Mapping[int, str]) -> None:
        self.base, self.rule, self.lr, self.domain_of = base, rule, lr, domain_of

    def units(self, mb: MicroBatch) -> float:
        return self.base.units(mb)

    def samples(self, mb: MicroBatch) -> int:
        return self.base.samples(mb)

    def __call__(self, model: torch.nn.Module, mb: MicroBatch) -> tuple[Aggregate, dict[str, float]]:
        domain = self.domain_of.get(id(mb), "_")
        if self.base.device is not None:
            mb = mb.to(self.base.device)
        head = lm_head(model)
        seen: dict[str, torch.Tensor] = {}
        hook = head.register_forward_hook(lambda _m, args, out: seen.update(hidden=args[0], logits=out))
        try:
            logp = response_logprobs(model, mb.input_ids, mb.attention_mask, mb.response_mask.shape[1],
                                     self.base.temperature)
        finally:
            hook.remove()
        keep = self.rule.keep_mask(seen["hidden"], seen["logits"], mb, self.lr, self.base.temperature, domain)
        return grpo_loss(logp, mb.old_logp, mb.advantages, keep, mb.ref_logp, self.base.cfg)


def lm_head(model: torch.nn.Module) -> torch.nn.Module:
    """The module that maps final hidden states to logits (a transformers causal LM's output embeddings)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module) or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise TypeError(f"CAPO needs a causal LM with output embeddings (an LM head); {type(model).__name__} has none")
    return head


def _head_group(optimizer: torch.optim.Optimizer, weight: torch.Tensor) -> Mapping[str, Any]:
    for group in optimizer.param_groups:
        if any(p is weight for p in group["params"]):
            return group
    raise ValueError("CAPO: the optimizer does not train the model's LM head (get_output_embeddings().weight)")


@dataclass
class CAPO:
    """CAPO's token mask around an inner update rule (``inner``: a rule or a ``make_rule`` name).

    The inner rule runs unchanged on a wrapped objective, so CAPO composes with every domain rule
    (``CAPO(inner="cgpo", inner_options={"alpha": 1.2})`` is CGPO with CAPO masking). The learning
    rate CAPO predicts with is the LM head's param-group rate when the update starts (the scheduled
    rate, not CGPO's share-scaled one). Metrics: ``capo_masked_fraction`` (and the fractions that
    broke each criterion) per domain and overall.
    """

    inner: str | UpdateRule = "joint"
    inner_options: Mapping[str, Any] = field(default_factory=dict)
    fisher_tau: float | None = 1e-4
    hessian_tau: float | None = 0.01
    symmetric: bool = True
    optimizer_model: OptimizerModel = "adam"
    top_k: int | None = 50
    max_masked_fraction: float | None = None
    chunk_tokens: int = 64
    name: str = "capo"
    rule: UpdateRule = field(init=False, repr=False)
    settings: CAPOSettings = field(init=False, repr=False)
    adam: AdamRowModel = field(default_factory=AdamRowModel, init=False, repr=False)
    _counts: dict[str, list[float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.settings = CAPOSettings(self.fisher_tau, self.hessian_tau, self.symmetric, self.optimizer_model,
                                     self.top_k, self.max_masked_fraction, self.chunk_tokens)
        if isinstance(self.inner, str):
            if self.inner == "capo":
                raise ValueError("CAPO's inner rule cannot be CAPO")
            self.rule = make_rule(self.inner, **dict(self.inner_options))
        else:
            if self.inner_options:
                raise ValueError("inner_options apply only when inner is a rule name")
            self.rule = self.inner

    def observe(self, step: int, batches: Sequence[DomainBatch]) -> None:
        self.rule.observe(step, batches)

    def keep_mask(self, hidden: torch.Tensor, logits: torch.Tensor, mb: MicroBatch, lr: float, temperature: float,
                  domain: str) -> torch.Tensor:
        """The response mask of ``mb`` with CAPO's masked tokens set to 0 (counts kept for the metrics)."""
        resp_len = mb.response_mask.shape[1]
        real = mb.response_mask.bool()
        adv = mb.advantages if mb.advantages.dim() == 2 else mb.advantages.unsqueeze(-1).expand_as(real)
        with torch.no_grad():
            h = hidden[:, -resp_len - 1:-1].detach().float()[real] / temperature
            z = logits[:, -resp_len - 1:-1].detach().float()[real] / temperature
            actions = mb.input_ids[:, -resp_len:][real]
            adam = self.adam if self.optimizer_model == "adam" else None
            curv = token_curvature(h, z, actions, adv[real], lr, self.settings, adam)
            mask = curvature_mask(curv.gain, curv.kl, self.settings)
            if adam is not None:
                adam.accumulate(curv, (~mask.masked).nonzero().squeeze(-1), self.chunk_tokens)
        counts = self._counts.setdefault(domain, [0.0, 0.0, 0.0, 0.0])
        for i, value in enumerate((real.sum(), mask.masked.sum(), mask.fisher.sum(), mask.hessian.sum())):
            counts[i] += float(value)
        keep = real.clone()
        keep[real] = ~mask.masked
        return keep.to(mb.response_mask.dtype)

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        if not isinstance(objective, GRPOObjective):
            raise TypeError(f"CAPO masks the tokens of a GRPOObjective, got {type(objective).__name__}")
        head = lm_head(model).weight
        assert isinstance(head, torch.Tensor)  # lm_head() checked it
        group = _head_group(optimizer, head)
        if self.optimizer_model == "adam":
            b1, b2 = group.get("betas", self.adam.betas)
            self.adam.betas, self.adam.eps = (float(b1), float(b2)), float(group.get("eps", self.adam.eps))
            self.adam.ensure(head.shape, head.device)
        self._counts = {}
        domain_of = {id(mb): b.name for b in batches for mb in b.micro_batches}
        wrapped = CAPOObjective(objective, self, float(group["lr"]), domain_of)
        result = self.rule.update(model, optimizer, batches, wrapped, step=step, scheduler=scheduler)
        self.adam.commit()
        totals = [0.0, 0.0, 0.0, 0.0]
        for name, (tokens, masked, fisher, hessian) in self._counts.items():
            totals = [t + c for t, c in zip(totals, (tokens, masked, fisher, hessian))]
            if name in result.domains and tokens > 0:
                result.domains[name].update(capo_masked_fraction=masked / tokens, capo_fisher_fraction=fisher / tokens,
                                            capo_hessian_fraction=hessian / tokens)
        if totals[0] > 0:
            result.extra.update(capo_masked_fraction=totals[1] / totals[0], capo_fisher_fraction=totals[2] / totals[0],
                                capo_hessian_fraction=totals[3] / totals[0])
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.rule.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rule.load_state_dict(state.get("inner", {}))
        if state.get("adam") is not None:
            self.adam.load_state_dict(state["adam"])
