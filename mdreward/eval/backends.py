"""lm-eval backends for OpenAI-compatible servers that give every repeat its own reproducible seed.

lm-eval's ``local-completions`` and ``local-chat-completions`` send the same ``seed`` (the model argument,
1234 by default) in every request, so a vLLM or SGLang server returns the same text for all repeats of a
prompt: "4 samples" would be one sample counted four times. ``mdreward-local-completions`` and
``mdreward-local-chat-completions`` are those backends with one change: request ``k`` (0-based repeat index)
for the document with id ``ID`` carries ``seed = (base_seed + crc32(ID) + k) mod 2**31``, where ``base_seed`` is
the backend's ``seed`` model argument. The seed does not depend on ``--limit``, batch order or concurrency.
``mdreward eval`` uses them in place of the stock names. lm-eval builds the model before it reads task files, so
with lm-eval's own command line use ``python -m mdreward.eval.lm_eval_cli --model mdreward-local-chat-completions ...``
(lm-eval's CLI with these registered).
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

SEEDED_BACKENDS = {"local-completions": "mdreward-local-completions",
                   "local-chat-completions": "mdreward-local-chat-completions"}
SEED_MODULUS = 2 ** 31


def repeat_seed(base_seed: int, doc_key: str, repeat: int) -> int:
    """The seed of repeat ``repeat`` of the document ``doc_key``."""
    return (int(base_seed) + zlib.crc32(doc_key.encode()) + int(repeat)) % SEED_MODULUS


def _doc_key(request: Any) -> str:
    doc = request.doc
    if isinstance(doc, Mapping) and doc.get("id") is not None:
        return str(doc["id"])
    return f"{request.task_name}/{request.doc_id}"


def with_repeat_seeds(requests: list[Any], base_seed: int) -> list[Any]:
    """Copies of ``requests`` whose generation kwargs carry each repeat's seed (lm-eval lists the repeats of
    one request consecutively, as the same object)."""
    seen: dict[tuple[Any, ...], int] = {}
    out = []
    for request in requests:
        doc_key = _doc_key(request)
        key = (request.task_name, request.doc_id, request.idx, doc_key)
        repeat = seen.get(key, 0)
        seen[key] = repeat + 1
        context, gen_kwargs = request.args[0], dict(request.args[1])
        gen_kwargs["seed"] = repeat_seed(base_seed, doc_key, repeat)
        out.append(dataclasses.replace(request, arguments=(context, gen_kwargs, *request.args[2:])))
    return out


def register_backends() -> None:
    """Register the seeded backends with lm-eval (idempotent)."""
    from lm_eval.api.registry import model_registry
    from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI

    if SEEDED_BACKENDS["local-completions"] in model_registry:
        return

    class SeededLocalCompletions(LocalCompletionsAPI):
        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            return list(super().generate_until(with_repeat_seeds(requests, self._seed), disable_tqdm))

    class SeededLocalChatCompletions(LocalChatCompletion):
        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            return list(super().generate_until(with_repeat_seeds(requests, self._seed), disable_tqdm))

    model_registry.register(SEEDED_BACKENDS["local-completions"])(SeededLocalCompletions)
    model_registry.register(SEEDED_BACKENDS["local-chat-completions"])(SeededLocalChatCompletions)
