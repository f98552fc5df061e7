"""MGS, modular gradient surgery (Cai et al., 2026): PCGrad applied independently within each module.

Each domain's share-weighted gradient is split by module (``conflict.ModuleLayout``: per layer
attention, MLP and normalization, plus embeddings and head, or a user grouping); inside every
module the domains' gradients go through PCGrad's projection (``project_conflicting``) against
each other's gradient *restricted to that module*, and the projected gradients are summed. A
conflict in one module therefore changes only that module's update; elsewhere the update is the
plain joint sum. With a single module (``modules="model"``) this is exactly ``PCGrad``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from .conflict import Grouping, ModuleLayout, check_grouping, conflict_metrics, domain_gradients, module_grams
from .updates import (ShareBy, Stateless, UpdateResult, _params, check_share_by, clip_and_step, domain_scales,
                      project_conflicting, refuse_sharded, step_generator)


@dataclass
class MGS(Stateless):
    """Joint step on the sum of per-module PCGrad-projected per-domain gradients.

    ``modules``: the grouping (see ``trainers.conflict``), default per-layer attn/mlp/norm.
    The random visiting order of PCGrad is drawn from one generator seeded by (seed, step), module
    after module, as PCGrad draws it for its single flat vector.
    Memory: K flat gradients (K parameter-sized buffers), one module's K projected slices and the
    merged gradient (one more parameter copy); PCGrad holds 2K + 1 copies.
    ``log_conflicts``: per-module inter-domain cosines and conflict counts from the same gradients
    (``conflict/...`` metrics; one K x K Gram matrix per module).
    """

    seed: int = 0
    modules: Grouping = "layer"
    domain_weights: Mapping[str, float] | None = None
    max_grad_norm: float | None = None
    share_by: ShareBy = "samples"
    log_conflicts: bool = True
    name: str = "mgs"
    measures_conflicts: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_share_by(self.share_by)
        check_grouping(self.modules)

    def observe(self, step, batches) -> None:
        pass

    def update(self, model, optimizer, batches, objective, *, step, scheduler=None) -> UpdateResult:
        scales = domain_scales(batches, objective, self.share_by, self.domain_weights)
        params = [p for p in _params(optimizer) if p.requires_grad]
        refuse_sharded(params, "MGS", "whole per-domain gradients of each module to project")
        layout = ModuleLayout.of_model(model, self.modules, params)
        grads, stats = domain_gradients(model, optimizer, layout, batches, objective, scales)
        result = UpdateResult(order=[b.name for b in batches], domains=stats)
        gen = step_generator(self.seed, step)
        merged = torch.empty_like(grads[0])
        for _, start, end in layout.modules:
            merged[start:end] = project_conflicting(grads[:, start:end], gen).sum(0)
        grams = module_grams(grads, layout)
        del grads
        metrics = conflict_metrics(grams, [b.name for b in batches])
        result.extra["conflicts"] = metrics["conflict/model/conflicts"]
        result.extra["module_conflicts"] = metrics["conflict/module_conflicts"]
        if self.log_conflicts:
            result.extra.update(metrics)
        layout.write_grads(merged)
        result.extra["grad_norm"] = clip_and_step(model, optimizer, self.max_grad_norm)
        if scheduler is not None:
            scheduler.step()
        return result
