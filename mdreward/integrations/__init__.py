"""Doors into mdreward from RL frameworks: verl (``verl``), TRL (``trl``) and an HTTP service (``server``).

Each submodule imports only what it needs; none of them is imported by ``mdreward`` itself.
"""
