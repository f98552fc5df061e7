"""CLI: ``python -m trainers.run --config trainers/configs/tiny_cgpo.toml [--set section.field=value ...]``.

``--resume`` continues from ``<out_dir>/checkpoint.pt``; ``--compare A.jsonl B.jsonl --plot out.png``
draws several runs' curves in one figure.
"""
from __future__ import annotations

import argparse
import json
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
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
