"""The ``mdreward`` command: ``score``, ``domains``, ``example`` (and ``serve`` when installed)."""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, judge_section, load_config
from .registry import load_domains
from .runner import ResumeMismatch, score_file
from .scoring import Scorer

EXAMPLE = "rollouts.jsonl"


def _example_text() -> str:
    return resources.files("mdreward").joinpath("examples", EXAMPLE).read_text()


def _judge_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    judge = judge_section(args.config)
    url = args.judge_url or judge.get("url")
    model = args.judge_model or judge.get("model")
    if not url:
        return {}
    try:
        from .judges.config import judge_options_from_cli
    except ImportError as exc:
        raise ConfigError(f"--judge-url needs the judge extra: pip install 'mdreward[judge]' ({exc})") from exc
    return judge_options_from_cli(url, model, judge)


def cmd_score(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not (args.resume or args.overwrite):
        print(f"error: {output} exists; pass --resume to continue it or --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, think_in_prompt=True if args.think_in_prompt else None,
                             domain_options=_judge_options(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.example == bool(args.input):
        print("error: give an input file or --example (not both)", file=sys.stderr)
        return 2
    if args.example:
        input_path = Path(tempfile.mkdtemp(prefix="mdreward-example-")) / EXAMPLE
        input_path.write_text(_example_text())
    else:
        input_path = Path(args.input)
    if not input_path.exists():
        print(f"error: input {input_path} does not exist", file=sys.stderr)
        return 2
    with Scorer(config) as scorer:
        try:
            summary = score_file(scorer, input_path, output, resume=args.resume, batch_size=args.batch_size,
                                 progress=not args.no_progress)
        except ResumeMismatch as exc:
            print(f"error: cannot resume: {exc}", file=sys.stderr)
            return 2
    print(summary.table())
    print(f"wrote {output}")
    return 0


def cmd_domains(args: argparse.Namespace) -> int:
    registry = load_domains()
    rows = [("domain", "package", "version", "description")]
    rows += [(e.name, e.provider, e.version, e.value.description) for e in registry]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    sys.stdout.write(_example_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdreward", description="Rewards for multi-domain LLM rollouts.")
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="score a JSONL file of rollouts")
    score.add_argument("input", nargs="?", help="input JSONL, one rollout per line (see docs/jsonl.md)")
    score.add_argument("--example", action="store_true", help="score the built-in mixed-domain example instead")
    score.add_argument("-o", "--output", required=True, help="output JSONL (same order, every record kept)")
    score.add_argument("--config", help="TOML config: [format], [timeouts], [judge], [domains.<name>]")
    score.add_argument("--think-in-prompt", action="store_true",
                       help="the chat template opened <think> in the prompt: responses carry only '...</think>'")
    score.add_argument("--judge-url", help="OpenAI-compatible endpoint for every model-judged domain")
    score.add_argument("--judge-model", help="model name served at --judge-url")
    score.add_argument("--resume", action="store_true", help="continue an interrupted run without re-scoring")
    score.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    score.add_argument("--batch-size", type=int, default=512, help="records scored together (default 512)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(run=cmd_score)

    sub.add_parser("domains", help="list installed domains").set_defaults(run=cmd_domains)
    sub.add_parser("example", help="print the built-in example rollouts").set_defaults(run=cmd_example)
    for name, builder in _optional_commands().items():
        builder(sub.add_parser(name, help=f"{name} (see docs)"))
    return parser


def _optional_commands() -> dict[str, Callable[[argparse.ArgumentParser], None]]:
    """Sub-commands that live with their optional dependencies (e.g. ``serve``)."""
    commands: dict[str, Callable[[argparse.ArgumentParser], None]] = {}
    try:
        from .integrations.server import add_serve_arguments
    except ImportError:
        return commands
    commands["serve"] = add_serve_arguments
    return commands


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
