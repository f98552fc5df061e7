"""An in-process judge on vLLM's offline ``LLM`` engine (GPU), for users who colocate the judge.

Each batch goes to the engine in one ``generate`` (plain prompts) or ``chat`` (messages) call on a
worker thread; the engine batches internally. Requests that share sampling parameters share a
call. ``finish_reason == "length"`` marks a truncated reply.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Sequence

from ..timeouts import DEFAULT_TIMEOUTS, Timeouts
from .base import JudgeFailure, JudgeReply, JudgeRequest, JudgeResult


class VLLMJudge:
    """Judge on a ``vllm.LLM``. Pass an engine you built, or use ``from_model``."""

    def __init__(self, llm: Any, *, name: str, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> None:
        self.model = name
        self.timeouts = timeouts
        self._llm = llm
        self._lock = threading.Lock()

    @classmethod
    def from_model(cls, model: str, *, timeouts: Timeouts = DEFAULT_TIMEOUTS, **engine_kwargs: Any) -> "VLLMJudge":
        """Start an engine: ``engine_kwargs`` go to ``vllm.LLM`` (``gpu_memory_utilization``,
        ``tensor_parallel_size``, ``max_model_len``, ``dtype``, ...)."""
        from vllm import LLM  # the `vllm` extra

        return cls(LLM(model=model, **engine_kwargs), name=model, timeouts=timeouts)

    async def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.sampling(), []).append(i)
        results: dict[int, JudgeResult] = {}
        for indices in groups.values():
            batch = [requests[i] for i in indices]
            try:
                outputs = await asyncio.wait_for(asyncio.to_thread(self._generate_sync, batch),
                                                 self.timeouts.judge_total_s)
            except asyncio.TimeoutError:
                outputs = [JudgeFailure(f"vLLM engine gave no answer within {self.timeouts.judge_total_s}s")] * len(batch)
            except (RuntimeError, ValueError) as exc:  # engine errors: out of memory, prompt over max_model_len
                outputs = [JudgeFailure(f"vLLM engine failed: {exc!r}", transient=False)] * len(batch)
            results.update(zip(indices, outputs))
        return [results[i] for i in range(len(requests))]

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the engine's tokenizer (domains bound their inputs with it)."""
        return len(self._llm.get_tokenizer().encode(text, add_special_tokens=False))

    def _generate_sync(self, batch: Sequence[JudgeRequest]) -> list[JudgeResult]:
        from vllm import SamplingParams

        first = batch[0]
        params = SamplingParams(temperature=first.temperature, top_p=first.top_p, max_tokens=first.max_tokens,
                                stop=list(first.stop) or None, seed=first.seed,
                                **({"top_k": first.top_k} if first.top_k is not None else {}))
        with self._lock:
            if first.endpoint == "completions":
                outputs = self._llm.generate([r.prompt for r in batch], params, use_tqdm=False)
            else:
                conversations = [[{"role": role, "content": content} for role, content in r.messages] for r in batch]
                outputs = self._llm.chat(conversations, params, use_tqdm=False)
        replies: list[JudgeResult] = []
        for output in outputs:
            completion = output.outputs[0]
            replies.append(JudgeReply(completion.text, completion.finish_reason,
                                      len(output.prompt_token_ids or ()), len(completion.token_ids or ())))
        return replies

    async def aclose(self) -> None:
        self._llm = None
