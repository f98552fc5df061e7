"""Evaluation: the CGPO paper's seven benchmarks as ready-to-score items (see ``datasets``)."""
from .datasets import BENCHMARKS, BenchmarkItem, load_benchmark, sample_for

__all__ = ["BENCHMARKS", "BenchmarkItem", "load_benchmark", "sample_for"]
