"""mdreward: typed, fast, unhackable rewards for multi-domain LLM reinforcement learning."""
from .registry import Domain, DomainSpec, DomainUnavailable, Registry, RuleDomain, load_domains
from .scoring import Scorer, ScoringConfig, ascore_batch, score_batch
from .timeouts import DEFAULT_TIMEOUTS, Timeouts
from .types import FormatRules, RewardTable, Sample, Score, Status

__all__ = [
    "Domain", "DomainSpec", "DomainUnavailable", "FormatRules", "Registry", "RewardTable", "RuleDomain", "Sample",
    "Score", "Scorer", "ScoringConfig", "Status", "Timeouts", "DEFAULT_TIMEOUTS", "ascore_batch",
    "load_domains", "score_batch",
]
__version__ = "0.1.0"
