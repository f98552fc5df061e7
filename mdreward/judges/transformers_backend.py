"""An in-process judge on Hugging Face transformers (CPU or GPU): small judges and tests.

Generation runs on a worker thread, one batch at a time (a model is not re-entrant), with
left padding; ``max_time`` (from ``Timeouts.judge_request_s``) bounds each batch. Greedy
decoding at temperature 0. A reply that stopped on the token or time limit is ``"length"``
(truncated), which every domain treats as "no verdict".
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Sequence

from ..timeouts import DEFAULT_TIMEOUTS, Timeouts
from .base import JudgeFailure, JudgeReply, JudgeRequest, JudgeResult


class TransformersJudge:
    """Judge on a loaded ``model`` and ``tokenizer`` (any causal LM; chat requests need a chat template)."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str | None = None, timeouts: Timeouts = DEFAULT_TIMEOUTS,
                 max_batch: int = 8, max_prompt_tokens: int = 4096, num_threads: int | None = None) -> None:
        self.model = name or getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__
        self._model = model
        self._tokenizer = tokenizer
        self.timeouts = timeouts
        self.max_batch = max_batch
        self.max_prompt_tokens = max_prompt_tokens
        self.num_threads = num_threads
        self._lock = threading.Lock()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, path: str, *, gguf_file: str | None = None, device: str | None = None,
                        dtype: str | None = None, timeouts: Timeouts = DEFAULT_TIMEOUTS, **kwargs: Any) -> "TransformersJudge":
        """Load a local model directory (or hub name where a hub is reachable); ``gguf_file`` for GGUF weights."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        load: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(path, **load)
        torch_dtype = getattr(torch, dtype) if dtype else None
        model = AutoModelForCausalLM.from_pretrained(path, **load, **({"dtype": torch_dtype} if torch_dtype else {}))
        if device:
            model.to(device)  # type: ignore[arg-type]  # transformers types its wrapped .to() wrongly
        model.eval()
        return cls(model, tokenizer, name=path if not gguf_file else f"{path}/{gguf_file}", timeouts=timeouts, **kwargs)

    async def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        results: list[JudgeResult] = []
        # Requests with the same sampling parameters run together.
        order = sorted(range(len(requests)), key=lambda i: repr(requests[i].sampling()))
        by_index: dict[int, JudgeResult] = {}
        for start in range(0, len(order), self.max_batch):
            group = order[start:start + self.max_batch]
            batch = [requests[i] for i in group]
            same = all(r.sampling() == batch[0].sampling() for r in batch)
            chunks = [batch] if same else [[r] for r in batch]
            outputs: list[JudgeResult] = []
            for chunk in chunks:
                outputs.extend(await self._generate_isolated(chunk))
            by_index.update(zip(group, outputs))
        results = [by_index[i] for i in range(len(requests))]
        return results

    async def _generate_isolated(self, chunk: list[JudgeRequest]) -> list[JudgeResult]:
        """One batch; if it fails (a prompt over the context, out of memory), each request alone, so one
        bad request fails only itself."""
        try:
            return await asyncio.to_thread(self._generate_sync, chunk)
        except (RuntimeError, ValueError) as exc:
            if len(chunk) == 1:
                return [JudgeFailure(f"local judge failed: {exc!r}", transient=False)]
        return [(await self._generate_isolated([request]))[0] for request in chunk]

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this judge's tokenizer (domains bound their inputs with it)."""
        return len(self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _texts(self, batch: Sequence[JudgeRequest]) -> list[str]:
        texts = []
        for request in batch:
            if request.endpoint == "completions":
                texts.append(request.prompt or "")
            else:
                messages = [{"role": role, "content": content} for role, content in request.messages]
                texts.append(self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return texts

    def _generate_sync(self, batch: Sequence[JudgeRequest]) -> list[JudgeResult]:
        import torch

        first = batch[0]
        tok = self._tokenizer
        with self._lock:
            tok.padding_side = "left"
            # A plain-text (completions) prompt has no control tokens: special-token text inside it stays
            # text. A chat prompt's control tokens come from the template; its contents are escaped upstream.
            plain = first.endpoint == "completions"
            encoded = tok(self._texts(batch), return_tensors="pt", padding=True, add_special_tokens=plain,
                          split_special_tokens=plain)
            if encoded["input_ids"].shape[1] > self.max_prompt_tokens:
                raise ValueError(f"prompt of {encoded['input_ids'].shape[1]} tokens is over {self.max_prompt_tokens}")
            encoded = {k: v.to(self._model.device) for k, v in encoded.items()}
            sampling: dict[str, Any] = ({"do_sample": False} if first.temperature <= 0 else
                                        {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p,
                                         "top_k": first.top_k or 0})
            if first.seed is not None:
                torch.manual_seed(first.seed)
            threads = torch.get_num_threads()
            if self.num_threads:  # torch's thread count is process-wide: set for this call only
                torch.set_num_threads(self.num_threads)
            try:
                with torch.no_grad():
                    out = self._model.generate(**encoded, max_new_tokens=first.max_tokens,
                                               pad_token_id=tok.pad_token_id,
                                               max_time=self.timeouts.judge_request_s,
                                               stop_strings=list(first.stop) or None,
                                               tokenizer=tok if first.stop else None, **sampling)
            finally:
                torch.set_num_threads(threads)
        prompt_len = encoded["input_ids"].shape[1]
        eos = _eos_ids(self._model, tok)
        replies: list[JudgeResult] = []
        for row in out[:, prompt_len:].tolist():
            ended = next((j for j, t in enumerate(row) if t in eos), None)
            tokens = row if ended is None else row[:ended]
            text = tok.decode(tokens, skip_special_tokens=True)
            stopped_on_string = bool(first.stop) and any(text.endswith(s) for s in first.stop)
            if stopped_on_string:
                for s in first.stop:
                    if text.endswith(s):
                        text = text[: -len(s)]
                        break
            if ended is None and not stopped_on_string and len(tokens) < first.max_tokens:
                # Stopped by max_time (the wall clock), not by the token limit: our failure, not the answer's.
                replies.append(JudgeFailure(f"local judge ran out of time ({self.timeouts.judge_request_s}s) after "
                                            f"{len(tokens)} of {first.max_tokens} tokens"))
                continue
            finish = "stop" if ended is not None or stopped_on_string else "length"
            replies.append(JudgeReply(text, finish, prompt_len, len(tokens)))
        return replies

    async def aclose(self) -> None:
        return None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found
