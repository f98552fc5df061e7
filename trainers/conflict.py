"""Where domains' gradients conflict: parameters grouped into modules, per-module inter-domain cosines.

Modules are found from parameter names (``model.named_parameters()``), never from module classes,
so the same rules hold for a plain model, a DDP wrapper's ``module.`` prefix, FSDP with
``use_orig_params=True`` and a PEFT model (FSDP1's flat parameters carry no module names: all ``other``).
Built-in groupings (``MODULE_GROUPINGS``) for Qwen2/Llama/Mistral-style decoders, whose names look
like ``model.layers.<i>.self_attn.q_proj.weight``:

- ``"layer"`` (default): per decoder layer ``i`` three modules, ``layer<i>.attn`` (the parameters
  under ``self_attn``/``attn``/``attention``: q/k/v/o and their biases), ``layer<i>.mlp`` (under
  ``mlp``/``feed_forward``/``ffn``: gate/up/down) and ``layer<i>.norm`` (every parameter whose
  module name contains ``norm`` or starts with ``ln``: ``input_layernorm``, ``post_attention_layernorm``,
  Qwen3's ``q_norm``/``k_norm``; a norm inside attention counts as a norm); outside the layers
  ``embed`` (a module name containing ``embed`` or ``wte``/``wpe``), ``lm_head`` (absent when tied to
  the embeddings: ``named_parameters`` lists a tied weight once), ``final_norm``; a parameter matched
  by none of these goes to ``layer<i>.other`` or ``other``. The layer index is the number after a
  ``layers``/``layer``/``h``/``blocks`` path component.
- ``"type"``: the same kinds pooled over layers (``attn``, ``mlp``, ``norm`` incl. the final norm,
  ``embed``, ``lm_head``, ``other``).
- ``"parameter"``: every parameter tensor is its own module (what the MGS authors' released code does).
- ``"model"``: one module holding everything (MGS is then exactly PCGrad).

A user grouping is either a mapping ``{group: [glob patterns over parameter names]}`` (the first
group, in mapping order, with a matching pattern wins; a parameter no pattern matches goes to
``other``; a pattern that matches no parameter is an error, to catch typos) or a callable
``name -> group`` (``None`` for ``other``). Every parameter lands in exactly one group, so the
module-wise gradients always add up to the whole gradient.

Metrics (``conflict_metrics``), from each domain's share-weighted gradient ``g_k`` (the gradient a
joint step would sum), for every module ``m`` and pair of domains ``a, b``:
``conflict/module/<m>/cos/<a>_vs_<b>`` (0 when either gradient is zero there),
``conflict/module/<m>/conflicts`` (pairs with ``g_a . g_b < 0`` in the module), the whole-model
``conflict/model/cos/<a>_vs_<b>``, ``conflict/model/conflicts``, ``conflict/model/grad_norm/<a>``,
and the totals ``conflict/modules``, ``conflict/modules_in_conflict`` (modules with at least one
conflicting pair) and ``conflict/module_conflicts`` (conflicting (module, pair)s).
Cost: one Gram matrix ``g[:, m] g[:, m]^T`` (K x K) per module, about ``K^2 P`` flops in all, on top of
the K flat gradients (K parameter-sized buffers) the caller already holds.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch

from .updates import DomainBatch, Objective, ShareBy, backward_domain, domain_scales, domain_units

Grouping = Union[str, Mapping[str, Sequence[str]], Callable[[str], Union[str, None]]]
MODULE_GROUPINGS = ("layer", "type", "parameter", "model")
OTHER = "other"

_LAYER_CONTAINERS = {"layers", "layer", "h", "blocks"}
_ATTENTION = {"self_attn", "attn", "attention", "self_attention", "cross_attn"}
_MLP = {"mlp", "feed_forward", "ffn", "block_sparse_moe"}
_NORM = re.compile(r"(norm|^ln(_|\d|$))")
_EMBED = re.compile(r"(embed|^wte$|^wpe$)")


def module_kind(name: str) -> tuple[int | None, str]:
    """(layer index or None, kind) of one parameter name; kind is attn, mlp, norm, embed, lm_head or other."""
    parts = name.split(".")[:-1]  # module path; the last part is weight/bias
    layer = None
    inner = parts
    for i, part in enumerate(parts[:-1]):
        if part in _LAYER_CONTAINERS and parts[i + 1].isdigit():
            layer, inner = int(parts[i + 1]), parts[i + 2:]
            break
    if any(_NORM.search(p) for p in inner):
        return layer, "norm"
    if any(p in _ATTENTION for p in inner):
        return layer, "attn"
    if any(p in _MLP for p in inner):
        return layer, "mlp"
    if layer is None:
        if any(_EMBED.search(p) for p in inner):
            return None, "embed"
        if "lm_head" in inner:
            return None, "lm_head"
    return layer, OTHER


def builtin_group(name: str, grouping: str) -> str:
    """The module a parameter belongs to under a built-in grouping (see the module docstring)."""
    if grouping == "parameter":
        return name
    if grouping == "model":
        return "model"
    layer, kind = module_kind(name)
    if grouping == "type":
        return kind
    if layer is None:
        return "final_norm" if kind == "norm" else kind
    return f"layer{layer}.{kind}"


def check_grouping(grouping: Grouping) -> None:
    """Raise ValueError unless ``grouping`` is a built-in name, a mapping of group to name patterns, or a callable."""
    if isinstance(grouping, str):
        if grouping not in MODULE_GROUPINGS:
            raise ValueError(f"module grouping must be one of {MODULE_GROUPINGS}, a mapping of group to name "
                             f"patterns, or a callable; got {grouping!r}")
    elif isinstance(grouping, Mapping):
        for group, pats in grouping.items():
            if isinstance(pats, str) or not all(isinstance(p, str) for p in pats):
                raise ValueError(f"module group {group!r}: expected a list of name patterns, got {pats!r}")
    elif not callable(grouping):
        raise ValueError(f"module grouping must be a name, a mapping or a callable, got {type(grouping).__name__}")


def group_names(names: Sequence[str], grouping: Grouping = "layer") -> dict[str, list[str]]:
    """``{module: [parameter names]}`` in order of first appearance; every name in exactly one module."""
    check_grouping(grouping)
    if isinstance(grouping, str):
        assign = [builtin_group(n, grouping) for n in names]
    elif isinstance(grouping, Mapping):
        assign = _assign_by_patterns(names, grouping)
    else:
        assign = []
        for n in names:
            group = grouping(n)
            if group is not None and not isinstance(group, str):
                raise ValueError(f"module grouping callable returned {group!r} for parameter {n!r}; "
                                 "expected a group name (str) or None")
            assign.append(OTHER if group is None else group)
    groups: dict[str, list[str]] = {}
    for n, g in zip(names, assign):
        groups.setdefault(g, []).append(n)
    return groups


def _assign_by_patterns(names: Sequence[str], patterns: Mapping[str, Sequence[str]]) -> list[str]:
    out = []
    for n in names:
        group = next((g for g, pats in patterns.items() if any(fnmatch.fnmatchcase(n, p) for p in pats)), OTHER)
        out.append(group)
    unmatched = [f"{g}: {p!r}" for g, pats in patterns.items() for p in pats
                 if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(f"module group patterns match no parameter: {unmatched} (names look like {names[:2]})")
    return out


@dataclass(frozen=True)
class ModuleLayout:
    """Parameters ordered module by module, so each module is one slice ``[start, end)`` of a flat vector.

    Within a module, parameters keep the order they were given in (with a single module the flat
    order is exactly the given order, e.g. the optimizer's).
    """

    names: list[str]
    params: list[torch.Tensor]
    modules: list[tuple[str, int, int]]

    @classmethod
    def build(cls, named: Iterable[tuple[str, torch.Tensor]], grouping: Grouping = "layer") -> "ModuleLayout":
        named = list(named)
        by_name = dict(named)
        if len(by_name) != len(named):
            raise ValueError("parameter names must be unique")
        names, params, modules, offset = [], [], [], 0
        for module, members in group_names([n for n, _ in named], grouping).items():
            start = offset
            for n in members:
                names.append(n)
                params.append(by_name[n])
                offset += by_name[n].numel()
            modules.append((module, start, offset))
        return cls(names, params, modules)

    @classmethod
    def of_model(cls, model: torch.nn.Module, grouping: Grouping = "layer",
                 params: Sequence[torch.Tensor] | None = None) -> "ModuleLayout":
        """The layout of ``params`` (default: the model's trainable parameters), named as in ``model``."""
        names = {id(p): n for n, p in model.named_parameters()}
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        missing = sum(id(p) not in names for p in params)
        if missing:
            raise ValueError(f"{missing} parameter(s) to group are not parameters of the model")
        return cls.build([(names[id(p)], p) for p in params], grouping)

    @property
    def numel(self) -> int:
        return self.modules[-1][2] if self.modules else 0

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Per-parameter tensors (in ``params`` order; None = zeros) as one flat vector in layout order."""
        if len(tensors) != len(self.params):
            raise ValueError(f"expected {len(self.params)} per-parameter tensors, got {len(tensors)}")
        return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                          for t, p in zip(tensors, self.params)])

    def read_grads(self, out: torch.Tensor) -> torch.Tensor:
        """Copy the parameters' current ``.grad`` (None = zeros) into the flat vector ``out``."""
        offset = 0
        for p in self.params:
            n = p.numel()
            if p.grad is None:
                out[offset:offset + n].zero_()
            else:
                out[offset:offset + n].copy_(p.grad.reshape(-1))
            offset += n
        return out

    def write_grads(self, flat: torch.Tensor) -> None:
        """Set each parameter's ``.grad`` to its slice of ``flat`` (views: no copy)."""
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p)
            offset += n


def as_flat(grads: torch.Tensor | Sequence[Sequence[torch.Tensor | None]] | Sequence[Mapping[str, torch.Tensor]],
            layout: ModuleLayout) -> torch.Tensor:
    """Per-domain gradients as a [K, P] tensor in layout order.

    ``grads``: already flat [K, P] (in layout order); or per domain a list of per-parameter tensors
    (in ``layout.params`` order); or per domain a mapping of parameter name to tensor (absent = zero).
    """
    if isinstance(grads, torch.Tensor):
        if grads.dim() != 2 or grads.shape[1] != layout.numel:
            raise ValueError(f"flat gradients must be [K, {layout.numel}], got {tuple(grads.shape)}")
        return grads
    rows = []
    for g in grads:
        if isinstance(g, Mapping):
            unknown = sorted(set(g) - set(layout.names))
            if unknown:
                raise ValueError(f"gradients for unknown parameters {unknown[:5]}")
            g = [g.get(n) for n in layout.names]
        rows.append(layout.flatten(list(g)))
    return torch.stack(rows)


def module_grams(grads: torch.Tensor, layout: ModuleLayout) -> dict[str, torch.Tensor]:
    """Per module the K x K Gram matrix of the domains' gradients restricted to it (float32 or wider)."""
    dtype = grads.dtype if grads.dtype in (torch.float32, torch.float64) else torch.float32
    out = {}
    for module, start, end in layout.modules:
        g = grads[:, start:end].to(dtype)
        out[module] = (g @ g.T).detach().cpu()
    return out


def _cosine(gram: torch.Tensor, i: int, j: int) -> float:
    denom = float(gram[i, i]) * float(gram[j, j])
    return float(gram[i, j]) / denom ** 0.5 if denom > 0 else 0.0


def conflict_metrics(grams: Mapping[str, torch.Tensor], domains: Sequence[str]) -> dict[str, float]:
    """Per-module and whole-model cosines and conflict counts from per-module Gram matrices."""
    pairs = [(i, j) for i in range(len(domains)) for j in range(i + 1, len(domains))]
    out: dict[str, float] = {}
    in_conflict = total = 0
    for module, gram in grams.items():
        conflicts = 0
        for i, j in pairs:
            out[f"conflict/module/{module}/cos/{domains[i]}_vs_{domains[j]}"] = _cosine(gram, i, j)
            conflicts += float(gram[i, j]) < 0
        out[f"conflict/module/{module}/conflicts"] = float(conflicts)
        in_conflict += conflicts > 0
        total += conflicts
    whole = sum(grams.values(), torch.zeros(len(domains), len(domains), dtype=torch.float64))
    for i, j in pairs:
        out[f"conflict/model/cos/{domains[i]}_vs_{domains[j]}"] = _cosine(whole, i, j)
    out["conflict/model/conflicts"] = float(sum(float(whole[i, j]) < 0 for i, j in pairs))
    for i, d in enumerate(domains):
        out[f"conflict/model/grad_norm/{d}"] = max(float(whole[i, i]), 0.0) ** 0.5
    out.update({"conflict/modules": float(len(grams)), "conflict/modules_in_conflict": float(in_conflict),
                "conflict/module_conflicts": float(total)})
    return out


def module_conflicts(grads: Any, layout: ModuleLayout, domains: Sequence[str]) -> dict[str, float]:
    """``conflict_metrics`` of per-domain gradients given flat or per parameter (see ``as_flat``)."""
    flat = as_flat(grads, layout)
    if flat.shape[0] != len(domains):
        raise ValueError(f"{flat.shape[0]} gradients for {len(domains)} domains")
    return conflict_metrics(module_grams(flat, layout), domains)


def domain_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, layout: ModuleLayout,
                     batches: Sequence[DomainBatch], objective: Objective, scales: Mapping[str, float],
                     units: Mapping[str, float] | None = None) -> tuple[torch.Tensor, dict[str, dict[str, float]]]:
    """Each domain's gradient of ``scales[k] * L_k`` as a row of a [K, P] tensor in layout order, and
    each domain's loss metrics. ``units``: per domain name, the unit count ``L_k`` is divided by (default:
    the batch's own). Leaves the parameters' ``.grad`` cleared."""
    first = layout.params[0]
    grads = torch.empty(len(batches), layout.numel, dtype=first.dtype, device=first.device)
    stats = {}
    for row, b in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        stats[b.name] = backward_domain(model, b, objective, scales[b.name], None if units is None else units[b.name])
        layout.read_grads(grads[row])
    optimizer.zero_grad(set_to_none=True)
    return grads, stats


def measure_conflicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[DomainBatch],
                      objective: Objective, *, grouping: Grouping = "layer", share_by: ShareBy = "samples",
                      domain_weights: Mapping[str, float] | None = None, noise_floor: bool = False,
                      running: RunningCosines | None = None) -> dict[str, float]:
    """The conflict diagnostic for any rule: one extra backward per domain on the mini-batch, before
    the rule's own update (the weights are not touched; ``.grad`` is left cleared).

    ``noise_floor``: each domain with at least two prompts is also split into two halves that share no
    prompt (``prompt_halves``), each backpropagated alone; their sum is the domain's
    gradient, so the inter-domain metrics do not change, and ``conflict/module/<m>/half_cos/<a>`` and
    ``conflict/model/half_cos/<a>`` give the cosine between the two halves: how aligned two samples of
    the *same* domain are, the yardstick for an inter-domain cosine. No extra backward; 2K buffers.
    ``running``: also fed each domain's own gradient ``grad L_k`` (unscaled by its share and weight),
    and its cosines reported as ``conflict/model/running_cos/<a>_vs_<b>`` (see ``RunningCosines``).
    Cost: a forward and backward of the whole mini-batch plus K flat gradients in memory at once.
    """
    if len(batches) < 2:
        return {}
    names = [b.name for b in batches]
    scales = domain_scales(batches, objective, share_by, domain_weights)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    layout = ModuleLayout.of_model(model, grouping, params)
    if not noise_floor:
        grads, _ = domain_gradients(model, optimizer, layout, batches, objective, scales)
        if running is not None:
            running.update({n: grads[k] / scales[n] for k, n in enumerate(names) if scales[n] > 0})
        return {**conflict_metrics(module_grams(grads, layout), names), **_running_metrics(running)}
    pieces: list[DomainBatch] = []
    owner: list[int] = []  # domain index of each piece
    for k, b in enumerate(batches):
        halves = prompt_halves(b)
        pieces += halves
        owner += [k] * len(halves)
    units = {b.name: domain_units(b, objective) for b in batches}
    grads, _ = domain_gradients(model, optimizer, layout, pieces, objective, scales, units)
    piece_grams = module_grams(grads, layout)
    sums = torch.zeros(len(batches), len(pieces), dtype=torch.float64)
    sums[owner, list(range(len(pieces)))] = 1.0
    if running is not None:
        running.update({n: (sums[k].to(grads) @ grads) / scales[n] for k, n in enumerate(names) if scales[n] > 0})
    del grads
    out = conflict_metrics({m: sums @ g.double() @ sums.T for m, g in piece_grams.items()}, names)
    whole = sum((g.double() for g in piece_grams.values()), torch.zeros(len(pieces), len(pieces), dtype=torch.float64))
    for k, name in enumerate(names):
        rows = [i for i, o in enumerate(owner) if o == k]
        if len(rows) == 2:
            for m, g in piece_grams.items():
                out[f"conflict/module/{m}/half_cos/{name}"] = _cosine(g, *rows)
            out[f"conflict/model/half_cos/{name}"] = _cosine(whole, *rows)
    return {**out, **_running_metrics(running)}


def _prompt_key(mb: Any, row: int) -> tuple[int, ...]:
    prompt_len = mb.input_ids.shape[1] - mb.response_mask.shape[1]
    ids = mb.input_ids[row, :prompt_len][mb.attention_mask[row, :prompt_len].bool()]
    return tuple(ids.tolist())


def prompt_halves(batch: DomainBatch) -> list[DomainBatch]:
    """The domain's responses in two halves that share no prompt: its prompts in order of first
    appearance, the first ``n // 2`` and the rest (a prompt is its unpadded prompt tokens; a micro-batch
    without ``input_ids``/``response_mask`` counts as one prompt). Each micro-batch is split by rows, so
    no piece is larger than a micro-batch. ``[batch]`` when the domain has fewer than two prompts.

    Under data parallelism the split is per rank: a prompt whose responses sit on two ranks may
    land in both halves."""
    rows: list[tuple[int, int, Any]] = []  # (micro-batch, row or -1 for the whole micro-batch, prompt)
    for i, mb in enumerate(batch.micro_batches):
        if hasattr(mb, "input_ids") and hasattr(mb, "response_mask"):
            rows += [(i, r, _prompt_key(mb, r)) for r in range(len(mb))]
        else:
            rows.append((i, -1, ("micro_batch", i)))
    prompts = list(dict.fromkeys(key for _, _, key in rows))
    if len(prompts) < 2:
        return [batch]
    first = set(prompts[:len(prompts) // 2])
    halves: list[DomainBatch] = []
    for in_first in (True, False):
        micro = []
        for i, mb in enumerate(batch.micro_batches):
            picked = [r for j, r, key in rows if j == i and (key in first) == in_first]
            if picked == [-1]:
                micro.append(mb)
            elif picked:
                micro.append(mb if len(picked) == len(mb) else mb.select(picked))
        halves.append(DomainBatch(batch.name, micro, batch.mean_reward, batch.reward_range, batch.filler))
    return halves


class RunningCosines:
    """Per domain a running mean of its flat gradient (``decay`` per update: ``m <- decay m + (1 - decay) g``,
    the first ``g`` as is) and the cosines between those means: one mini-batch's gradient is dominated by
    its particular prompts, the running mean keeps what persists over mini-batches. A domain missing
    from an update keeps its mean."""

    def __init__(self, decay: float = 0.9) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"running-mean decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.means: dict[str, torch.Tensor] = {}

    def update(self, grads: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Fold in one gradient per domain; return ``cosines()``."""
        for name, g in grads.items():
            g = g.detach().to(torch.float64)
            old = self.means.get(name)
            self.means[name] = g.clone() if old is None else old.mul_(self.decay).add_(g, alpha=1 - self.decay)
        return self.cosines()

    def cosines(self) -> dict[str, float]:
        """``conflict/model/running_cos/<a>_vs_<b>`` for every pair of domains seen (in order of first sight)."""
        names = list(self.means)
        out = {}
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                den = float(self.means[a].norm() * self.means[b].norm())
                cos = float(self.means[a] @ self.means[b]) / den if den > 0 else 0.0
                out[f"conflict/model/running_cos/{a}_vs_{b}"] = cos
        return out


def _running_metrics(running: RunningCosines | None) -> dict[str, float]:
    return {} if running is None else running.cosines()
