"""Judge models behind one interface: an OpenAI-compatible HTTP client, vLLM in-process, and
transformers in-process. Heavy dependencies (openai, torch, vllm) load only when a backend is built."""
from .base import JudgeClient, JudgeFailure, JudgeReply, JudgeRequest, JudgeResult
from .config import JudgeConfigError, build_judge, judge_options_from_cli, judged_domains

__all__ = ["JudgeClient", "JudgeConfigError", "JudgeFailure", "JudgeReply", "JudgeRequest",
           "JudgeResult", "build_judge", "judge_options_from_cli", "judged_domains"]
