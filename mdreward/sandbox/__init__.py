"""Isolated execution of untrusted code: one ``Sandbox`` protocol, two backends.

``LocalSandbox`` (default): warm bubblewrap sandboxes on this machine. ``FusionSandbox``
(``mdreward.sandbox.fusion``, extra ``sandbox-fusion``): a SandboxFusion service over HTTP.
"""
from .base import (AssertJob, Job, RunResult, Sandbox, SandboxError, SandboxLimits, SandboxUnavailable,
                   StdioCase, StdioJob, TestResult, TestStep)
from .local import LocalSandbox
from .verdict import normalize_stdout, stdout_matches

__all__ = ["AssertJob", "Job", "LocalSandbox", "RunResult", "Sandbox", "SandboxError", "SandboxLimits",
           "SandboxUnavailable", "StdioCase", "StdioJob", "TestResult", "TestStep", "normalize_stdout",
           "stdout_matches"]
