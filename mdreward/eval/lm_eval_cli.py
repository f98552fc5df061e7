"""``python -m mdreward.eval.lm_eval_cli ARGS``: lm-eval's own command line with mdreward's seeded backends registered.

lm-eval builds the model before it reads the task files, so ``--model mdreward-local-chat-completions`` is unknown
to a plain ``lm_eval``; this runs the same command after registering it (every other argument is lm-eval's).
"""
from __future__ import annotations


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    from .backends import register_backends

    register_backends()
    cli_evaluate()


if __name__ == "__main__":
    main()
