"""CLI: ``python -m trainers.run --config trainers/configs/tiny_cgpo.toml [--set section.field=value ...]``.

``--resume`` continues from ``<out_dir>/checkpoint.pt``; ``--compare A.jsonl B.jsonl --plot out.png``
draws several runs' curves in one figure. ``--compare-rules joint,cgpo --seeds 1,2,3 --config CFG --out DIR``
runs (or reuses) every rule x seed and writes a table and a plot (``trainers/compare.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .config import load_config
from .metrics import plot_runs


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.run", description="GRPO/CGPO training with mdreward rewards")
    ap.add_argument("--config", help="TOML or JSON run config")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field")
    ap.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("--compare", nargs="+", metavar="LABEL=METRICS_JSONL", help="plot runs together and exit")
    ap.add_argument("--plot", default="reward_curves.png", help="output PNG for --compare")
    ap.add_argument("--compare-rules", metavar="RULE,RULE|all",
                    help="run every rule x seed on --config (or reuse finished runs) and write a table and a plot")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL:SECTION.FIELD=VALUE,...",
                    help="one more column for --compare-rules, e.g. joint_3lr:update.rule=joint,update.lr=6e-4")
    ap.add_argument("--seeds", default="1,2,3", help="seeds for --compare-rules (default 1,2,3)")
    ap.add_argument("--out", help="output directory for --compare-rules")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time for --compare-rules")
    ap.add_argument("--last-evals", type=int, default=2,
                    help="--compare-rules scores each run by the mean of its last N held-out evaluations")
    ap.add_argument("--metric", default="reward", help="held-out metric for the --compare-rules table (correct_rate, ...)")
    args = ap.parse_args(argv)
    if args.compare_rules or args.variant:
        return _compare_rules(ap, args)
    if args.compare:
        runs = dict(item.split("=", 1) for item in args.compare)
        print(plot_runs(runs, args.plot))
        return 0
    if not args.config:
        ap.error("--config is required")
    try:
        cfg = load_config(args.config, args.set)
    except (OSError, ValueError) as exc:  # a bad config is the user's to fix: say what, not a traceback
        ap.error(str(exc))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from .engine import LocalEngine

    engine = LocalEngine(cfg, resume=args.resume)
    try:
        engine.train()
    finally:
        engine.close()
    print(f"metrics: {engine.log.path}\nplot: {engine.out / 'reward_curves.png'}")
    return 0


def _compare_rules(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .compare import compare, parse_seeds, parse_variants

    if not args.config or not args.out:
        ap.error("--compare-rules needs --config and --out")
    if args.jobs < 1 or args.last_evals < 1:
        ap.error("--jobs and --last-evals must be at least 1")
    try:
        variants = parse_variants(args.compare_rules, args.variant)
        seeds = parse_seeds(args.seeds)
        compare(args.config, variants, seeds, args.out, common=args.set, jobs=args.jobs, last_evals=args.last_evals,
                metric=args.metric)
    except (OSError, ValueError) as exc:
        ap.error(str(exc))
    except RuntimeError as exc:  # a run failed: its log's tail is in the message
        print(f"[compare] {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
