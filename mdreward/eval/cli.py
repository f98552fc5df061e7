"""``mdreward eval``: the paper's Table 1 benchmarks through lm-eval, scored by mdreward."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from . import harness, report

TASKS_PATH = Path(__file__).parent / "tasks"
GROUP = "cgpo_seven"
SIX_DOMAIN_GROUP = "cgpo_six_domain"
GROUPS = {GROUP: report.TASKS, SIX_DOMAIN_GROUP: report.SIX_DOMAIN_TASKS}
#: Backends that send raw text (no chat messages): no chat template unless asked for.
TEXT_BACKENDS = frozenset({"local-completions", "mdreward-local-completions", "openai-completions"})
JUDGED_TASKS = frozenset({"cgpo_writingbench"})
#: Tasks scored by a domain from a plugin package: (domain, what to install).
PLUGIN_DOMAINS = {"cgpo_zebra": ("logic", "mdreward-logic (pip install -e plugins/mdreward-logic)"),
                  "cgpo_hitab": ("table", "mdreward-table (pip install -e plugins/mdreward-table)")}


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks-path", action="store_true",
                        help="print the lm-eval include path of the cgpo_* tasks and exit")
    parser.add_argument("--model", default="hf", help="any lm-eval backend: vllm, hf, local-chat-completions, ...")
    parser.add_argument("--model-args", default="", help="the backend's arguments, e.g. pretrained=PATH,dtype=bfloat16")
    parser.add_argument("--tasks", default=GROUP, help=f"{GROUP}, {SIX_DOMAIN_GROUP} or a comma-separated list of "
                                                       f"{', '.join(report.SIX_DOMAIN_TASKS)}")
    parser.add_argument("--limit", type=float, help="first N items of each task (a fraction below 1)")
    parser.add_argument("--data-dir", help="read the benchmarks from this folder instead of the hub (docs/evaluation-data.md)")
    parser.add_argument("--judge-url", help="OpenAI-compatible endpoint serving WritingBench's critic model")
    parser.add_argument("--judge-model", help="the critic's model name at --judge-url")
    parser.add_argument("--samples", type=int, default=harness.PAPER_SAMPLES, help="samples per query (paper: 4)")
    parser.add_argument("--temperature", type=float, default=harness.PAPER_TEMPERATURE, help="paper: 0.6")
    parser.add_argument("--top-p", type=float, default=harness.PAPER_TOP_P, help="paper: 0.95")
    parser.add_argument("--max-gen-toks", type=int, default=harness.DEFAULT_MAX_GEN_TOKS,
                        help=f"generated tokens per sample (default {harness.DEFAULT_MAX_GEN_TOKS})")
    parser.add_argument("--require-think", action="store_true",
                        help="a response without <think>...</think> is wrong (default: score the final answer)")
    parser.add_argument("--think-in-prompt", action="store_true",
                        help="the chat template opens <think> in the prompt: responses carry only '...</think>'")
    parser.add_argument("--chat-template", dest="chat_template", action="store_true", default=None,
                        help="apply the model's chat template (default for every backend but text completions)")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false")
    parser.add_argument("--system-instruction", help="a system message before each prompt")
    parser.add_argument("--batch-size", default="1", help="lm-eval's --batch_size (e.g. auto for hf)")
    parser.add_argument("--output-dir", help="where summary.json, table.md, table.png and lm-eval's logs go")
    parser.add_argument("--compare", nargs="*", default=[], metavar="SUMMARY",
                        help="other runs' summary.json (or their output dirs) to put beside this run in the table")
    parser.set_defaults(run=cmd_eval)


def expand_tasks(spec: str) -> list[str]:
    names: list[str] = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        if name in GROUPS:
            names += [t for t in GROUPS[name] if t not in names]
        elif name in report.SIX_DOMAIN_TASKS:
            names += [name] if name not in names else []
        else:
            raise ValueError(f"unknown task {name!r}; use {GROUP}, {SIX_DOMAIN_GROUP} or any of "
                             f"{', '.join(report.SIX_DOMAIN_TASKS)}")
    if not names:
        raise ValueError("no task given")
    return names


def missing_plugins(tasks: list[str]) -> dict[str, str]:
    """Why each task whose domain plugin is not installed cannot run (task -> error)."""
    needed = [task for task in tasks if task in PLUGIN_DOMAINS]
    if not needed:
        return {}
    from ..registry import load_domains

    available = load_domains().names()
    return {task: f"needs the '{PLUGIN_DOMAINS[task][0]}' domain: install {PLUGIN_DOMAINS[task][1]}; task not run"
            for task in needed if PLUGIN_DOMAINS[task][0] not in available}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("mdreward", "lm_eval", "torch", "transformers", "vllm", "datasets"):
        try:
            out[name] = package_metadata.version(name.replace("_", "-"))
        except package_metadata.PackageNotFoundError:
            continue
    return out


def redacted(model_args: str) -> str:
    """Model args without secrets (api keys, tokens) for the summary."""
    parts = []
    for part in filter(None, model_args.split(",")):
        key = part.split("=", 1)[0]
        parts.append(f"{key}=***" if any(s in key.lower() for s in ("key", "token", "secret")) else part)
    return ",".join(parts)


def _task_manager(settings_metadata: dict[str, Any], samples: int) -> Any:
    from lm_eval.tasks import TaskManager

    class SettingsTaskManager(TaskManager):
        """Only our tasks (no scan of lm-eval's own ~10k), with the run's number of samples per query."""

        def load(self, task_list: Any) -> Any:
            loaded = super().load(task_list)
            for task in loaded["tasks"].values():
                task.set_config(key="repeats", value=samples)
            return loaded

    return SettingsTaskManager(include_path=str(TASKS_PATH), include_defaults=False, metadata=settings_metadata)


def run_lm_eval(args: argparse.Namespace, tasks: list[str]) -> dict[str, Any]:
    """One lm-eval run over ``tasks``; returns lm-eval's results (with ``samples``)."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from .backends import SEEDED_BACKENDS, register_backends

    register_backends()
    model = SEEDED_BACKENDS.get(args.model, args.model)
    chat = args.chat_template if args.chat_template is not None else model not in TEXT_BACKENDS
    gen_kwargs = {"temperature": args.temperature, "top_p": args.top_p, "max_gen_toks": args.max_gen_toks,
                  "do_sample": args.temperature > 0}
    task_metadata = {"data_dir": args.data_dir, "judge_url": args.judge_url, "judge_model": args.judge_model,
                     "require_think": args.require_think, "think_in_prompt": args.think_in_prompt}
    tracker = EvaluationTracker(output_path=str(Path(args.output_dir) / "lm_eval")) if args.output_dir else None
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    results = lm_eval.simple_evaluate(
        model=model, model_args=args.model_args, tasks=tasks, limit=limit, batch_size=args.batch_size,
        log_samples=True, apply_chat_template=chat, system_instruction=args.system_instruction,
        gen_kwargs=gen_kwargs, task_manager=_task_manager(task_metadata, args.samples),
        evaluation_tracker=tracker, bootstrap_iters=0)
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    if tracker is not None:
        samples = results.pop("samples")
        tracker.save_results_aggregated(results=results, samples=samples)
        for task in results["configs"]:
            tracker.save_results_samples(task_name=task, samples=samples[task])
        results["samples"] = samples
    results["_settings"] = {"model": args.model, "backend": model, "chat_template": chat}
    return results


def build_summary(args: argparse.Namespace, results: dict[str, Any], skipped: dict[str, str],
                  timing: dict[str, Any]) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for task in expand_tasks(args.tasks):
        if task in skipped:
            tasks[task] = {"score": None, "items": 0, "samples": 0, "unscored": 0, "stderr": None,
                           "error": skipped[task]}
        elif task in results.get("results", {}):
            items = int(results["n-samples"][task]["effective"])
            tasks[task] = report.task_summary(results["results"][task], items, harness.FILTER_NAME)
    settings = {"model": args.model, "backend": results.get("_settings", {}).get("backend", args.model),
                "model_args": redacted(args.model_args), "samples": args.samples, "temperature": args.temperature,
                "top_p": args.top_p, "max_gen_toks": args.max_gen_toks, "do_sample": args.temperature > 0,
                "require_think": args.require_think, "think_in_prompt": args.think_in_prompt,
                "chat_template": results.get("_settings", {}).get("chat_template"), "limit": args.limit,
                "data_dir": args.data_dir or "hub", "judge_model": args.judge_model,
                "system_instruction": args.system_instruction}
    return {"tasks": tasks, "avg": report.average(tasks), "settings": settings, "versions": versions(),
            "timing": timing}


def cmd_eval(args: argparse.Namespace) -> int:
    if args.tasks_path:
        print(TASKS_PATH)
        return 0
    try:
        tasks = expand_tasks(args.tasks)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.samples < 1 or args.max_gen_toks < 1:
        print("error: --samples and --max-gen-toks must be at least 1", file=sys.stderr)
        return 2
    if args.judge_url and not args.judge_model:
        print("error: --judge-url needs --judge-model (the critic's model name at that endpoint)", file=sys.stderr)
        return 2
    try:
        compared = report.load_compared(args.compare)
    except (OSError, ValueError) as exc:
        print(f"error: --compare: {exc}", file=sys.stderr)
        return 2
    skipped = {}
    if not args.judge_url:
        for task in JUDGED_TASKS.intersection(tasks):
            skipped[task] = "needs WritingBench's critic: pass --judge-url (and --judge-model); task not run"
            print(f"error: {task} {skipped[task]}", file=sys.stderr)
    for task, reason in missing_plugins(tasks).items():
        skipped[task] = reason
        print(f"error: {task} {reason}", file=sys.stderr)
    to_run = [t for t in tasks if t not in skipped]
    started = time.perf_counter()
    harness.TIMING.reset()
    results: dict[str, Any] = {}
    if to_run:
        try:
            results = run_lm_eval(args, to_run)
        except ImportError as exc:
            print(f"error: mdreward eval needs lm-eval: pip install 'mdreward[eval]' ({exc})", file=sys.stderr)
            return 2
    total_s = time.perf_counter() - started if to_run else 0.0
    timing = harness.TIMING.report(total_s)
    summary = build_summary(args, results, skipped, timing)
    print(report.screen_summary(summary))
    print(f"scoring took {timing['scoring_s']:.1f} s, {100 * timing['scoring_share_of_generation']:.1f}% of "
          f"generation ({timing['generation_s']:.1f} s)" if timing["generation_s"] > 0 else "")
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "table.md").write_text(report.table_markdown(summary, compared))
        drew = report.table_png(out / "table.png", summary, compared)
        print(f"wrote {out / 'summary.json'}, {out / 'table.md'}" + (f", {out / 'table.png'}" if drew else
              " (no table.png: matplotlib is not installed)") + f" and lm-eval's logs under {out / 'lm_eval'}")
    return 0 if all(entry.get("score") is not None for entry in summary["tasks"].values()) else 1
