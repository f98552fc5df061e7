"""GXPO (Gradient Extrapolation-Based Policy Optimization, Swapnil et al. 2026, Algorithm 1) as update rules.

An active GXPO update, on one mini-batch, with the loss ``L`` that joint learning uses:

1. ``g0 = grad L(theta0)``; one optimizer step (fast step 1) to ``theta1``;
2. ``g1 = grad L(theta1)``; one optimizer step (fast step 2) to ``theta2``;
3. on the active set ``|g0_i| > delta``: ``r_i = g1_i / g0_i``,
   ``scale_i = S_K(r_i) / S_2(r_i)`` with ``S_n(r) = 1 + r + ... + r^(n-1)``; elsewhere ``scale_i = 1``
   (the observed two-step displacement is kept);
4. ``theta_K = theta0 + (theta2 - theta0) * scale``; ``theta~ = theta0 + alpha (theta_K - theta0)``;
5. ``g_slow = grad L(theta~)``; one optimizer step from ``theta~`` (the slow correction);
6. a rolling z-score of ``|g_slow|`` against the previous ``window`` norms: once ``Z >= tau`` every
   later update is a single-pass (joint, i.e. GRPO) step, for good.

Three backward passes per active update, one after the gate trips. ``GXPO`` applies this to the whole
mini-batch; ``CGPOGXPO`` (``cgpo_gxpo``) uses it for each of CGPO's domain sub-steps and ``FAMOGXPO``
(``famo_gxpo``) for FAMO's step on its weighted loss.
"""
from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch

from .updates import (CGPO, FAMO, DomainBatch, Objective, ShareBy, UpdateResult, _params, backward_domain,
                      check_share_by, clip_and_step, domain_scales, refuse_sharded, scaled_lr)

#: Stabilizers of the authors' released code (``stabilize=True``): active ratios clamped to this range ...
RATIO_BOUNDS = (-2.0, 3.0)
#: ... and the scale to ``[1, K/2 + 1]``.
SCALE_LOW = 1.0

FastState = Literal["advance", "restore"]


@dataclass
class GXPOSettings:
    """Algorithm 1's options. Defaults: the paper's (K = 5, alpha = 0.5, delta = 1e-8, tau = 0.5).

    ``window``: norms kept for the gate's mean and std (the paper names w without a value; 30 is the
    authors' code). ``warmup``: norms collected before the gate may trip (default: a full window, as
    in the authors' code; 2 is Algorithm 1's literal ``len(B) > 1``). ``eps``: the z-score's
    denominator guard. ``stabilize``: clamp ratios to [-2, 3] and the scale to [1, K/2 + 1] (the
    authors' code; False gives the clean rule of Corollary 2). ``fast_state``: ``"advance"`` (the
    paper) lets the two fast steps update the optimizer state (Adam's moments and step count advance
    three times per active update); ``"restore"`` puts the state back before the slow step, so the
    optimizer state sees only ``g_slow``.
    """

    virtual_steps: int = 5
    alpha: float = 0.5
    delta: float = 1e-8
    tau: float = 0.5
    window: int = 30
    warmup: int | None = None
    eps: float = 1e-8
    stabilize: bool = True
    fast_state: FastState = "advance"

    def __post_init__(self) -> None:
        if int(self.virtual_steps) < 2:
            raise ValueError(f"GXPO virtual_steps (K) must be at least 2, got {self.virtual_steps}")
        if int(self.window) < 2:
            raise ValueError(f"GXPO window must hold at least 2 norms, got {self.window}")
        if self.warmup is not None and not 2 <= int(self.warmup) <= int(self.window):
            raise ValueError(f"GXPO warmup must be between 2 and window ({self.window}), got {self.warmup}")
        if self.delta < 0 or self.eps <= 0:
            raise ValueError(f"GXPO needs delta >= 0 and eps > 0, got delta={self.delta}, eps={self.eps}")
        if self.fast_state not in ("advance", "restore"):
            raise ValueError(f"GXPO fast_state must be 'advance' or 'restore', got {self.fast_state!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "GXPOSettings":
        """Settings from a mapping (a config's ``update.gxpo`` table); an unknown key is an error naming it."""
        known = {f.name for f in dataclasses.fields(GXPOSettings)}
        unknown = sorted(set(options or {}) - known)
        if unknown:
            raise ValueError(f"unknown GXPO option(s) {unknown}; known: {sorted(known)}")
        return GXPOSettings(**dict(options or {}))

    def settings(self) -> "GXPOSettings":
        return GXPOSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GXPOSettings)})


class Gate:
    """Rolling z-score gate on the corrective-gradient norm. Once tripped it stays tripped."""

    def __init__(self, settings: GXPOSettings) -> None:
        self.tau, self.eps = settings.tau, settings.eps
        self.warmup = int(settings.warmup or settings.window)
        self.norms: deque[float] = deque(maxlen=int(settings.window))
        self.updates = 0                    # active updates seen (t in Algorithm 1)
        self.tripped_at: int | None = None  # s*: the first update that falls back

    @property
    def open(self) -> bool:
        return self.tripped_at is None

    def observe(self, norm: float) -> float:
        """Score ``norm`` against the buffer (before adding it); trip when ``Z >= tau``. Returns Z (nan in warm-up)."""
        z = math.nan
        if len(self.norms) >= self.warmup:
            mean = sum(self.norms) / len(self.norms)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.norms) / len(self.norms))  # population std
            z = (norm - mean) / (std + self.eps)
            if z >= self.tau:
                self.tripped_at = self.updates + 1
        self.norms.append(norm)
        self.updates += 1
        return z

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms), "updates": self.updates, "tripped_at": self.tripped_at}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.norms.clear()
        self.norms.extend(float(x) for x in state["norms"])
        self.updates = int(state["updates"])
        self.tripped_at = None if state["tripped_at"] is None else int(state["tripped_at"])


def geometric_sum(r: torch.Tensor, n: int) -> torch.Tensor:
    """``1 + r + ... + r^(n-1)`` by Horner's rule (exact where the closed form divides by ``1 - r`` = 0)."""
    out = torch.ones_like(r)
    for _ in range(n - 1):
        out = out * r + 1.0
    return out


def extrapolation_scale(g0: torch.Tensor, g1: torch.Tensor, settings: GXPOSettings
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per coordinate: ``(scale, active, clamped)``; ``scale = S_K(r) / S_2(r)`` on ``|g0| > delta``, else 1.

    Where ``S_2 = 1 + r`` is within ``delta`` of 0 (``r`` near -1) or the scale is not finite, the
    scale is 1 (the observed displacement), in both modes.
    """
    k = int(settings.virtual_steps)
    active = g0.abs() > settings.delta
    r = torch.where(active, g1 / torch.where(active, g0, torch.ones_like(g0)), torch.ones_like(g0))
    clamped = torch.zeros_like(active)
    if settings.stabilize:
        low, high = RATIO_BOUNDS
        clamped = active & ((r < low) | (r > high) | ~torch.isfinite(r))
        r = r.nan_to_num(nan=1.0).clamp(low, high)
    s2 = 1.0 + r
    scale = torch.where(active & (s2.abs() > settings.delta), geometric_sum(r, k) / s2, torch.ones_like(r))
    scale = torch.where(torch.isfinite(scale), scale, torch.ones_like(scale))
    if settings.stabilize:
        scale = scale.clamp(SCALE_LOW, k / 2.0 + 1.0)
    return scale, active, clamped


def _total(values: Sequence[torch.Tensor]) -> float:
    """Sum of 0-d tensors with one device sync (not one per parameter)."""
    if not values:
        return 0.0
    device = values[0].device
    return float(torch.stack([v.to(device, torch.float64) for v in values]).sum())


def _grad_norm(params: Sequence[torch.Tensor]) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _snapshot_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[Any, dict[str, Any]]:
    return {p: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
            for p, st in optimizer.state.items()}


def _restore_optimizer_state(optimizer: torch.optim.Optimizer, saved: Mapping[Any, dict[str, Any]]) -> None:
    for p in list(optimizer.state):
        if p not in saved:
            del optimizer.state[p]  # state created by the fast steps: the optimizer had none before
    for p, st in saved.items():
        optimizer.state[p] = dict(st)


Backward = Callable[[], dict[str, dict[str, float]]]


def extrapolated_step(settings: GXPOSettings, gate: Gate, optimizer: torch.optim.Optimizer,
                      params: Sequence[torch.Tensor], backward: Backward, step: Callable[[], float],
                      grad_scale: float = 1.0) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """One GXPO update (Algorithm 1, lines 4-27) of ``params``.

    ``backward()`` zeroes the gradients, accumulates the loss's gradient and returns per-domain
    metrics; ``step()`` clips and takes one optimizer step (returns the clip norm). ``grad_scale``:
    the loss was multiplied by it (norms are reported and gated unscaled). Returns the domain
    metrics of the first pass (at the starting point, as every rule reports them) and the rule's.
    """
    refuse_sharded(params, "GXPO", "whole-gradient norms for its gate (a rank's shard norm differs by rank)")
    domains = backward()
    g0_norm = _grad_norm(params) / grad_scale
    if not gate.open:
        step()
        return domains, {"backward_passes": 1.0, "grad_norm": g0_norm, "gxpo_active": 0.0, "gxpo_gate_tripped": 1.0}
    extra = {"backward_passes": 1.0, "gxpo_active": 0.0, "gxpo_gate_tripped": 0.0, "gxpo_skipped": 1.0,
             "gxpo_g0_norm": g0_norm}
    if not math.isfinite(g0_norm):  # nothing moved yet: skip the update, as a clipped joint step would
        optimizer.zero_grad(set_to_none=True)
        return domains, extra
    with torch.no_grad():
        theta0 = [p.detach().clone() for p in params]
        buffers = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]  # g0
    saved = _snapshot_optimizer_state(optimizer) if settings.fast_state == "restore" else None

    def give_up(passes: float) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        with torch.no_grad():
            for p, t0 in zip(params, theta0):
                p.copy_(t0)
        if saved is not None:
            _restore_optimizer_state(optimizer, saved)
        optimizer.zero_grad(set_to_none=True)
        return domains, {**extra, "backward_passes": passes}

    step()                                                       # fast step 1: theta1
    backward()                                                   # backward pass 2: g1 at theta1
    g1_norm = _grad_norm(params) / grad_scale
    if not math.isfinite(g1_norm):
        return give_up(2.0)
    sums: dict[str, list[torch.Tensor]] = {k: [] for k in ("dot01", "active", "clamped", "observed", "extrapolated",
                                                             "scale")}
    with torch.no_grad():
        for i, p in enumerate(params):
            g0 = buffers[i]
            g1 = p.grad if p.grad is not None else torch.zeros_like(p)
            sums["dot01"].append((g0 * g1).sum())
            buffers[i], act, clip = extrapolation_scale(g0, g1, settings)  # the g0 buffer becomes the scale
            sums["active"].append(act.sum())
            sums["clamped"].append(clip.sum())
    step()                                                       # fast step 2: theta2
    with torch.no_grad():
        for p, t0, scale in zip(params, theta0, buffers):
            p.sub_(t0)                                           # theta2 - theta0
            sums["observed"].append(p.square().sum())
            p.mul_(scale)                                        # theta_K - theta0
            sums["extrapolated"].append(p.square().sum())
            sums["scale"].append(scale.sum())
            p.mul_(settings.alpha).add_(t0)                      # theta~ = theta0 + alpha (theta_K - theta0)
    del buffers
    total = sum(p.numel() for p in params)
    dot01, active, clamped, observed_sq, extrapolated_sq, scale_sum = (_total(sums[k]) for k in sums)
    if saved is not None:
        _restore_optimizer_state(optimizer, saved)
    backward()                                                   # backward pass 3: g_slow at theta~
    slow_norm = _grad_norm(params) / grad_scale
    if not math.isfinite(slow_norm):
        return give_up(3.0)
    step()                                                       # slow correction
    z = gate.observe(slow_norm)
    extra.update({"backward_passes": 3.0, "grad_norm": slow_norm, "gxpo_active": 1.0, "gxpo_skipped": 0.0,
                  "gxpo_gate_tripped": 0.0 if gate.open else 1.0, "gxpo_z": z, "gxpo_g1_norm": g1_norm,
                  "gxpo_active_fraction": active / max(total, 1),
                  "gxpo_ratio_clamped_fraction": clamped / max(active, 1),
                  "gxpo_scale_mean": scale_sum / max(total, 1),
                  "gxpo_cos_g0_g1": dot01 / (g0_norm * g1_norm * grad_scale ** 2 + 1e-30),
                  "gxpo_observed_norm": math.sqrt(observed_sq),
                  "gxpo_extrapolated_norm": math.sqrt(extrapolated_sq)})
    return domains, extra


# ---- GXPO on the whole mini-batch --------------------------------------------------------------
@dataclass
class GXPO(GXPOSettings):
    """GXPO with the joint loss ``sum_k share_k L_k`` (importance weights as joint) as its GRPO loss."""

    domain_weights: Mapping[str, float] | None = None
    max_grad_norm: float | None = None
    share_by: ShareBy = "samples"
    name: str = "gxpo"
    _gate: Gate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_share_by(self.share_by)
        self._gate = Gate(self.settings())

    def observe(self, step: int, batches: Sequence[DomainBatch]) -> None:
        pass

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        scale = domain_scales(batches, objective, self.share_by, self.domain_weights)
        params = [p for p in _params(optimizer) if p.requires_grad]

        def backward() -> dict[str, dict[str, float]]:
            optimizer.zero_grad(set_to_none=True)
            return {b.name: backward_domain(model, b, objective, scale[b.name]) for b in batches}

        domains, extra = extrapolated_step(self, self._gate, optimizer, params, backward,
                                           lambda: clip_and_step(model, optimizer, self.max_grad_norm))
        if scheduler is not None:
            scheduler.step()
        return UpdateResult(order=[b.name for b in batches], domains=domains, extra=extra)

    def state_dict(self) -> dict[str, Any]:
        return {"gate": self._gate.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("gate") is not None:
            self._gate.load_state_dict(state["gate"])


# ---- GXPO inside each CGPO domain sub-step -------------------------------------------------------
@dataclass
class CGPOGXPO(CGPO):
    """CGPO whose domain sub-step is a GXPO update (three backward passes of that domain while active).

    Each domain has its own gate (domains' gradient norms differ in scale, so one rolling window
    over all of them would read a domain change as a spike); a tripped domain's sub-step is
    CGPO's plain single step from then on. Step scaling, order, optimizer state, clipping and the
    final interpolation are CGPO's. ``gxpo``: the GXPO options (``GXPOSettings`` field names).
    """

    gxpo: Mapping[str, Any] = field(default_factory=dict)
    name: str = "cgpo_gxpo"
    _gates: dict[str, Gate] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._settings = GXPOSettings.from_options(self.gxpo)

    def gate(self, domain: str) -> Gate:
        return self._gates.setdefault(domain, Gate(self._settings))

    def _domain_step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: DomainBatch,
                     objective: Objective, scale: float, params: list[torch.Tensor]) -> dict[str, float]:
        loss_scale = 1.0 if self.scaling == "lr" else scale

        def backward() -> dict[str, dict[str, float]]:
            optimizer.zero_grad(set_to_none=True)
            return {batch.name: backward_domain(model, batch, objective, loss_scale)}

        def take_step() -> float:
            if self.scaling == "lr":
                with scaled_lr(optimizer, scale):
                    return clip_and_step(model, optimizer, self.max_grad_norm)
            return clip_and_step(model, optimizer, self.max_grad_norm, grad_scale=scale)

        domains, extra = extrapolated_step(self._settings, self.gate(batch.name), optimizer, params, backward,
                                           take_step, grad_scale=loss_scale)
        return {**domains[batch.name], **extra}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "gates": {n: g.state_dict() for n, g in self._gates.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        for name, gate_state in (state.get("gates") or {}).items():
            self.gate(name).load_state_dict(gate_state)


# ---- GXPO on FAMO's weighted loss ----------------------------------------------------------------
@dataclass
class FAMOGXPO(FAMO):
    """FAMO whose single step on ``sum_k a_k L_k`` is a GXPO update (the weights stay fixed within it).

    FAMO's task weights move in ``observe`` (once per rollout step), as in ``famo``; ``gxpo``: the
    GXPO options (``GXPOSettings`` field names).
    """

    gxpo: Mapping[str, Any] = field(default_factory=dict)
    name: str = "famo_gxpo"

    def __post_init__(self) -> None:
        self._settings = GXPOSettings.from_options(self.gxpo)
        self._gate = Gate(self._settings)

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        names = [b.name for b in batches]
        if not self._q or not set(names) <= set(self._q):
            self.observe(step, batches)  # used without an engine: measure q from this mini-batch
        weights = self.loss_weights(names)
        params = [p for p in _params(optimizer) if p.requires_grad]

        def backward() -> dict[str, dict[str, float]]:
            optimizer.zero_grad(set_to_none=True)
            return {b.name: {**backward_domain(model, b, objective, weights[b.name]), "famo_weight": weights[b.name]}
                    for b in batches}

        domains, extra = extrapolated_step(self._settings, self._gate, optimizer, params, backward,
                                           lambda: clip_and_step(model, optimizer, self.max_grad_norm))
        if scheduler is not None:
            scheduler.step()
        return UpdateResult(order=names, domains=domains, extra=extra)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "gate": self._gate.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("gate") is not None:
            self._gate.load_state_dict(state["gate"])
        super().load_state_dict(state)


__all__ = ["CGPOGXPO", "FAMOGXPO", "GXPO", "GXPOSettings", "Gate", "extrapolated_step", "extrapolation_scale",
           "geometric_sum"]
