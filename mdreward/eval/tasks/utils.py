"""Functions the cgpo_* task files name with ``!function utils.<name>`` (the code lives in mdreward.eval)."""
from mdreward.eval.backends import register_backends
from mdreward.eval.harness import (
    ScoreWithMdreward,
    doc_to_text,
    load_docs,
    mean_of_samples,
    process_results,
    standard_error,
    total,
)

register_backends()

__all__ = ["ScoreWithMdreward", "doc_to_text", "load_docs", "mean_of_samples", "process_results",
           "standard_error", "total"]
