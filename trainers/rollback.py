"""Data-free conflict-subspace rollback: reset the components that later-domain training moved
against an earlier domain's edit back to their values before that training.

Three checkpoints: ``base`` (before the earlier domain's training), ``before`` (after it, before the
later domains) and ``after`` (after the later domains). A *component* is one MLP neuron (its row of
``gate_proj`` and ``up_proj`` and its column of ``down_proj``) or one attention head (query head:
its rows of ``q_proj`` and columns of ``o_proj``; key/value head: its rows of ``k_proj`` and
``v_proj``; biases with their rows). With the earlier edit ``dA = before - base`` and the later
edit ``dB = after - before`` restricted to a component, the criteria score:

- ``conflict``: ``max(0, -<dA, dB>)``, how far the later edit moved the component back against the
  earlier domain's edit (a shared route, edited by both, in opposite directions);
- ``magnitude``: ``|dB|^2``, the components the later domains changed most (needs no ``base``);
- ``random``: a seeded random order (the control).

The top ``fraction`` of each kind of component in ``scope`` (ranked separately for MLP neurons and
attention heads) gets its ``before`` values; every other parameter keeps its ``after`` value.
See docs/trainers.md ("Math refresh and conflict-subspace rollback") for the source of the
criterion. CLI: ``python -m trainers.rollback --base B --before X --after Y --fraction 0.05 --out DIR``.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

CRITERIA = ("conflict", "magnitude", "random")
SCOPES = {"mlp": ("mlp",), "attn": ("attn",), "both": ("mlp", "attn")}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Part:
    """One parameter's share of a group's components: ``unit`` consecutive indices along ``dim`` each."""

    param: str
    dim: int
    unit: int


@dataclass(frozen=True)
class Group:
    """``count`` components of one kind in one layer (e.g. the neurons of one MLP)."""

    kind: str    # mlp | attn
    name: str    # e.g. model.layers.0.mlp, model.layers.0.self_attn.q_heads
    count: int
    parts: tuple[Part, ...]


def _parts(state: State, prefix: str, spec: Sequence[tuple[str, int]], unit: int) -> tuple[Part, ...]:
    """``Part``s for ``prefix + name`` weights along ``dim``, plus the biases of row-sliced ones."""
    out = []
    for name, dim in spec:
        out.append(Part(f"{prefix}{name}.weight", dim, unit))
        if dim == 0 and f"{prefix}{name}.bias" in state:
            out.append(Part(f"{prefix}{name}.bias", 0, unit))
    return tuple(out)


def find_groups(state: State, head_dim: int | None, scope: str = "mlp") -> list[Group]:
    """The MLP-neuron and attention-head groups of a Qwen2/Llama-style state dict, in ``scope``."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {sorted(SCOPES)}, got {scope!r}")
    kinds = SCOPES[scope]
    groups: list[Group] = []
    for key in sorted(state):
        mlp = re.fullmatch(r"(.*\.mlp\.)up_proj\.weight", key)
        if mlp and "mlp" in kinds:
            prefix = mlp.group(1)
            spec = [("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)]
            parts = _parts(state, prefix, [(n, d) for n, d in spec if f"{prefix}{n}.weight" in state], 1)
            groups.append(Group("mlp", prefix.rstrip("."), state[key].shape[0], parts))
        attn = re.fullmatch(r"(.*\.self_attn\.)q_proj\.weight", key)
        if attn and "attn" in kinds:
            if not head_dim:
                raise ValueError("attention components need the head size: pass --head-dim (or a checkpoint "
                                 "whose model config is readable)")
            prefix = attn.group(1)
            q_rows, kv_rows = state[key].shape[0], state[f"{prefix}k_proj.weight"].shape[0]
            if q_rows % head_dim or kv_rows % head_dim:
                raise ValueError(f"--head-dim {head_dim} does not divide the {q_rows} query rows and {kv_rows} "
                                 f"key/value rows of {prefix.rstrip('.')}: wrong head size")
            q_heads, kv_heads = q_rows // head_dim, kv_rows // head_dim
            groups.append(Group("attn", prefix + "q_heads", q_heads,
                                _parts(state, prefix, [("q_proj", 0), ("o_proj", 1)], head_dim)))
            groups.append(Group("attn", prefix + "kv_heads", kv_heads,
                                _parts(state, prefix, [("k_proj", 0), ("v_proj", 0)], head_dim)))
    if not groups:
        raise ValueError(f"no {scope} components found: expected Qwen2/Llama-style names "
                         "(...mlp.up_proj.weight, ...self_attn.q_proj.weight)")
    return groups


def _per_component(values: torch.Tensor, part: Part) -> torch.Tensor:
    """Sum of ``values`` (shaped like the parameter) over each component's slice."""
    moved = values.movedim(part.dim, 0)
    return moved.reshape(moved.shape[0] // part.unit, -1).sum(dim=1)


def _delta(a: State, b: State, name: str) -> torch.Tensor:
    return b[name].detach().double() - a[name].detach().double()


def component_scores(group: Group, *, before: State, after: State, base: State | None = None,
                     criterion: str = "conflict", generator: torch.Generator | None = None) -> torch.Tensor:
    """One score per component of ``group`` (higher: rolled back first)."""
    if criterion == "random":
        return torch.rand(group.count, generator=generator, dtype=torch.float64)
    total = torch.zeros(group.count, dtype=torch.float64)
    for part in group.parts:
        later = _delta(before, after, part.param)
        if criterion == "magnitude":
            total += _per_component(later * later, part)
        elif criterion == "conflict":
            if base is None:
                raise ValueError("criterion 'conflict' needs the checkpoint before the earlier domain's training "
                                 "(--base); without it use --criterion magnitude")
            total += _per_component(_delta(base, before, part.param) * later, part)
        else:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    return (-total).clamp(min=0) if criterion == "conflict" else total


@dataclass
class Selection:
    """The components to roll back: per group, the indices of its selected components."""

    criterion: str
    fraction: float
    chosen: dict[str, list[int]]
    counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "fraction": self.fraction, "components": self.counts,
                "selected": {k: v for k, v in self.chosen.items() if v}}


def select(groups: Sequence[Group], *, before: State, after: State, base: State | None = None,
           fraction: float, criterion: str = "conflict", seed: int = 0) -> Selection:
    """The top ``fraction`` of each kind's components by ``criterion`` (ties: lower index first)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    _check_same_shapes(groups, before, after, base)
    gen = torch.Generator().manual_seed(seed)
    chosen: dict[str, list[int]] = {g.name: [] for g in groups}
    for kind in sorted({g.kind for g in groups}):
        members = [g for g in groups if g.kind == kind]
        scores = torch.cat([component_scores(g, before=before, after=after, base=base, criterion=criterion,
                                             generator=gen) for g in members])
        k = round(fraction * len(scores))
        order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
        offsets, acc = [], 0
        for g in members:
            offsets.append(acc)
            acc += g.count
        for flat in sorted(order):
            i = max(j for j, start in enumerate(offsets) if start <= flat)
            chosen[members[i].name].append(flat - offsets[i])
    return Selection(criterion, fraction, chosen, {g.name: g.count for g in groups})


def _check_same_shapes(groups: Sequence[Group], *states: State | None) -> None:
    for part in (p for g in groups for p in g.parts):
        shapes = {tuple(s[part.param].shape) if part.param in s else None for s in states if s is not None}
        if len(shapes) != 1 or None in shapes:
            raise ValueError(f"parameter {part.param!r} is missing from a checkpoint or differs in shape: {shapes}")


def apply_rollback(groups: Sequence[Group], selection: Selection, *, before: State,
                   after: State) -> dict[str, torch.Tensor]:
    """A copy of ``after`` whose selected components carry their ``before`` values."""
    out = {name: tensor.detach().clone() for name, tensor in after.items()}
    for group in groups:
        for index in selection.chosen.get(group.name, []):
            for part in group.parts:
                span = slice(index * part.unit, (index + 1) * part.unit)
                out[part.param].movedim(part.dim, 0)[span] = before[part.param].movedim(part.dim, 0)[span]
    return out


# ---- checkpoints -------------------------------------------------------------------------------
def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """(state dict, head size or None) of a trainers ``checkpoint.pt`` or an HF ``save_pretrained`` dir."""
    path = Path(path)
    if path.is_dir():
        from transformers import AutoConfig, AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")  # as saved
        return dict(model.state_dict()), _head_dim(AutoConfig.from_pretrained(path))
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (a trainers checkpoint.pt or an HF model directory)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path}: not a trainers checkpoint (no 'model' state dict)")
    head = None
    model_dir = Path(((ckpt.get("config") or {}).get("model") or {}).get("path", ""))
    if (model_dir / "config.json").exists():
        from transformers import AutoConfig

        head = _head_dim(AutoConfig.from_pretrained(model_dir))
    return dict(ckpt["model"]), head


def _head_dim(config: Any) -> int | None:
    head = getattr(config, "head_dim", None)
    if head:
        return int(head)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    return hidden // heads if hidden and heads else None


def save_like(after: str | Path, out: str | Path, state: State) -> Path:
    """Write ``state`` in ``after``'s format: ``out/checkpoint.pt`` (other entries kept) or an HF dir."""
    after, out = Path(after), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if after.is_dir():
        from transformers import AutoModelForCausalLM

        shutil.copytree(after, out, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*WEIGHT_FILES))  # tokenizer and config files
        model = AutoModelForCausalLM.from_pretrained(after, dtype="auto")
        model.load_state_dict(dict(state))
        model.save_pretrained(out)
        return out
    ckpt = torch.load(after, map_location="cpu", weights_only=False)
    ckpt["model"] = dict(state)
    torch.save(ckpt, out / "checkpoint.pt")
    return out / "checkpoint.pt"


def _load_arg(flag: str, path: str) -> tuple[dict[str, torch.Tensor], int | None]:
    """``load_state(path)``; a file that is no checkpoint is a ValueError naming the argument."""
    try:
        return load_state(path)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:  # torch.load / from_pretrained
        raise ValueError(f"{flag} {path}: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.rollback", description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="checkpoint before the later domains' training")
    ap.add_argument("--after", required=True, help="checkpoint after the later domains' training")
    ap.add_argument("--base", help="checkpoint before the earlier domain's training (criterion 'conflict')")
    ap.add_argument("--fraction", type=float, required=True, help="share of each kind of component rolled back")
    ap.add_argument("--criterion", choices=CRITERIA, default="conflict")
    ap.add_argument("--scope", choices=sorted(SCOPES), default="mlp")
    ap.add_argument("--head-dim", type=int, help="attention head size (default: from the model config)")
    ap.add_argument("--seed", type=int, default=0, help="criterion 'random'")
    ap.add_argument("--out", required=True, help="output directory (checkpoint.pt or an HF model dir, as --after)")
    args = ap.parse_args(argv)
    try:
        before, head = _load_arg("--before", args.before)
        after, _ = _load_arg("--after", args.after)
        base = _load_arg("--base", args.base)[0] if args.base else None
        groups = find_groups(after, args.head_dim or head, args.scope)
        selection = select(groups, before=before, after=after, base=base, fraction=args.fraction,
                           criterion=args.criterion, seed=args.seed)
    except (OSError, ValueError) as exc:
        ap.error(str(exc))
    written = save_like(args.after, args.out, apply_rollback(groups, selection, before=before, after=after))
    report = Path(args.out) / "rollback.json"
    report.write_text(json.dumps({"scope": args.scope, **selection.to_dict()}, indent=1), encoding="utf-8")
    picked = sum(len(v) for v in selection.chosen.values())
    print(f"rolled back {picked} of {sum(selection.counts.values())} components -> {written} (selection: {report})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
