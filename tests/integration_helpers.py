"""Shared pieces of the integration tests: two small plugin domains and a tiny offline Qwen2 model.

The domains are real implementations of the Domain protocol (registered the way a plugin would be),
used where a test needs a second domain or work that takes a known time.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Sequence

import mdreward
from mdreward.extract import FormatViolation, split_think
from mdreward.registry import DomainSpec, Registry
from mdreward.types import FormatRules, RewardTable, Sample, Score

KEYWORD_TABLE = RewardTable({"correct": 1.0, "wrong": 0.0, "format_error": -1.0})


class KeywordDomain:
    """Rewards a response whose text after </think> contains the reference word."""

    name = "keyword"

    def __init__(self, *, format_rules: FormatRules, timeouts: Any, table: RewardTable = KEYWORD_TABLE) -> None:
        self.table, self.format_rules = table, format_rules

    async def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        out = []
        for s in samples:
            split = split_think(s.response, self.format_rules)
            if isinstance(split, FormatViolation):
                out.append(Score.format_error(self.table["format_error"], split.reason))
                continue
            correct = (s.reference or "").lower() in split.after.lower()
            out.append(Score.ok(self.table["correct" if correct else "wrong"], format_ok=True, correct=correct))
        return out

    async def aclose(self) -> None:
        return None


class SlowDomain:
    """Takes ``metadata.sleep_s`` seconds (default 0.3) per batch, then rewards 1.0: known, slow work."""

    name = "slow"

    def __init__(self, *, format_rules: FormatRules, timeouts: Any, table: RewardTable = KEYWORD_TABLE) -> None:
        self.table = table

    async def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        await asyncio.sleep(max(float(s.metadata.get("sleep_s", 0.3)) for s in samples))
        return [Score.ok(self.table["correct"], correct=True, format_ok=True) for _ in samples]

    async def aclose(self) -> None:
        return None


KEYWORD = DomainSpec("keyword", KeywordDomain, "test: reference word after </think>", KEYWORD_TABLE,
                     required_fields=("response", "reference"))
SLOW = DomainSpec("slow", SlowDomain, "test: sleeps, then 1.0", KEYWORD_TABLE)


def registry_with(*extra: DomainSpec) -> Registry[DomainSpec]:
    """The installed domains plus ``extra`` (registered as a third-party package would be)."""
    installed = mdreward.load_domains()
    registry: Registry[DomainSpec] = Registry("domain")
    for entry in installed:
        registry.register(entry.name, entry.value, entry.provider, entry.version)
    for spec in extra:
        registry.register(spec.name, spec, "mdreward-tests", "0")
    return registry


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(corpus: Sequence[str], vocab_size: int = 400) -> Any:
    """A byte-level BPE trained here with Qwen2's normalizer, pre-tokenizer and decoder (so that
    transformers, which rebuilds a Qwen2 tokenizer's pre-tokenizer on load, keeps it as trained)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus) * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_qwen2(tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised 2-layer Qwen2 sized to ``tokenizer``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(config)
