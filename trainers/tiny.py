"""A tiny Qwen2 policy built offline: a locally trained tokenizer and a briefly warm-started model.

No hub access: the tokenizer is a byte-level BPE trained here with Qwen2's pre-tokenizer (digits
split one by one), the model a 2-layer ``Qwen2ForCausalLM``. ``build_tiny_policy`` warm-starts it on
noisy synthetic solutions (see ``tasks.sft_example``) so RL starts from a policy that is sometimes
right and sometimes badly formatted. CLI: ``python -m trainers.tiny --out DIR``.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Sequence

import torch

from .tasks import sft_example

#: Qwen2's pre-tokenization regex (single digits, letters runs, punctuation runs, whitespace).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
EOS = "<|endoftext|>"
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]


def train_tokenizer(corpus: Sequence[str], vocab_size: int = 512):
    """A byte-level BPE with Qwen2's pre-tokenizer, wrapped as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    fast.add_tokens(TAG_TOKENS)
    return fast


def tiny_config(vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                intermediate: int = 256, max_positions: int = 256):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=max_positions, tie_word_embeddings=True)


def plain_prompt(question: str) -> str:
    """The prompt format of tiny policies (no chat template)."""
    return f"Q: {question}\nA: "


def build_tiny_policy(out: str | Path, *, tasks: Sequence[str] = ("arith", "max"), seed: int = 0,
                      sft_steps: int = 300, batch_size: int = 64, lr: float = 3e-3, p_wrong: float = 0.5,
                      p_bad_format: float = 0.3, hidden: int = 64, layers: int = 2, intermediate: int = 256,
                      log_every: int = 100) -> Path:
    """Train a tokenizer, build a tiny Qwen2 and warm-start it; save both under ``out``."""
    from transformers import Qwen2ForCausalLM

    out = Path(out)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    pairs = [sft_example(t, rng, p_wrong=p_wrong, p_bad_format=p_bad_format)
             for _ in range(4000) for t in tasks]
    tokenizer = train_tokenizer([plain_prompt(q) + r for q, r in pairs])
    model = Qwen2ForCausalLM(tiny_config(len(tokenizer), hidden=hidden, layers=layers, intermediate=intermediate))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / sft_steps))
    model.train()
    started = time.perf_counter()
    for step in range(sft_steps):
        batch = [sft_example(rng.choice(list(tasks)), rng, p_wrong=p_wrong, p_bad_format=p_bad_format)
                 for _ in range(batch_size)]
        ids, labels = _sft_batch(tokenizer, batch)
        loss = model(input_ids=ids, attention_mask=(ids != -1).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"[tiny] sft step {step + 1}/{sft_steps} loss {loss.item():.3f} "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tiny_policy.json").write_text(json.dumps({"tasks": list(tasks), "seed": seed, "sft_steps": sft_steps,
                                                      "p_wrong": p_wrong, "p_bad_format": p_bad_format}, indent=2))
    return out


def ensure_tiny_policy(out: str | Path, *, tasks: Sequence[str], sft_steps: int, seed: int, who: str = "engine",
                       strict: bool = True) -> Path:
    """The tiny policy under ``out``: built if missing. If present but built for other tasks or warm-start
    steps (its ``tiny_policy.json``): ``ValueError`` naming the difference when ``strict`` (a comparison
    would start every run from weights its config does not describe), else a warning line (a single run
    may point ``model.path`` at any tiny policy on purpose)."""
    out = Path(out)
    if not (out / "config.json").exists():
        print(f"[{who}] building tiny policy in {out} (offline, {sft_steps} warm-start steps)", flush=True)
        return build_tiny_policy(out, tasks=tasks, sft_steps=sft_steps, seed=seed)
    record = out / "tiny_policy.json"
    if record.exists():
        built = json.loads(record.read_text())
        wanted = {"tasks": list(tasks), "sft_steps": sft_steps}
        differ = {k: (built.get(k), v) for k, v in wanted.items() if built.get(k) != v}
        if differ:
            detail = ", ".join(f"{k}: built {b!r}, configured {w!r}" for k, (b, w) in differ.items())
            message = f"model.path {out} holds a tiny policy built for other options ({detail})"
            if strict:
                raise ValueError(f"{message}: delete it or point model.path elsewhere")
            print(f"[{who}] note: {message}; using it as it is", flush=True)
    return out


def _sft_batch(tokenizer, pairs):
    rows, label_rows = [], []
    for q, r in pairs:
        p = tokenizer(plain_prompt(q), add_special_tokens=False)["input_ids"]
        a = tokenizer(r + EOS, add_special_tokens=False)["input_ids"]
        rows.append(p + a)
        label_rows.append([-100] * len(p) + a)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in label_rows])
    return ids, labels


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", default="arith,max")
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    build_tiny_policy(args.out, tasks=args.tasks.split(","), sft_steps=args.sft_steps, seed=args.seed)
    print(f"tiny policy written to {args.out}")


if __name__ == "__main__":
    main()
