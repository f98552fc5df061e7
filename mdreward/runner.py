"""Score a JSONL file into another, in order, resumable, with a per-domain summary."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

from .records import RecordError, parse_line, sample_from_record, scored_record
from .scoring import Scorer
from .types import Score, Status


@dataclass
class DomainSummary:
    records: int = 0
    reward_sum: float = 0.0
    scored: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Status})
    wall_s: float = 0.0

    def add(self, reward: float | None, status: str) -> None:
        self.records += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if reward is not None:
            self.scored += 1
            self.reward_sum += reward

    @property
    def mean_reward(self) -> float | None:
        return self.reward_sum / self.scored if self.scored else None


@dataclass
class RunSummary:
    domains: dict[str, DomainSummary] = field(default_factory=dict)
    resumed: int = 0
    wall_s: float = 0.0

    def add(self, domain: str, reward: float | None, status: str) -> None:
        self.domains.setdefault(domain, DomainSummary()).add(reward, status)

    def table(self) -> str:
        header = ("domain", "records", "mean reward", "ok", "format error", "error", "wall s")
        rows = []
        for name in sorted(self.domains):
            d = self.domains[name]
            share = lambda status: f"{100 * d.by_status.get(status, 0) / d.records:.1f}%"  # noqa: E731
            mean = f"{d.mean_reward:+.3f}" if d.mean_reward is not None else "-"
            rows.append((name, str(d.records), mean, share("ok"), share("format_error"), share("error"), f"{d.wall_s:.2f}"))
        total = sum(d.records for d in self.domains.values())
        rows.append(("total", str(total), "", "", "", "", f"{self.wall_s:.2f}"))
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, rows)]
        if self.resumed:
            lines.append(f"(resumed: {self.resumed} records were already scored and were not scored again)")
        return "\n".join(lines)


class ResumeMismatch(RuntimeError):
    """The existing output does not belong to this input."""


def _domain_of(record: Any, scorer: Scorer) -> str:
    """The summary row of a record: its registered domain's full name, else what it said."""
    domain = record.get("domain") if isinstance(record, dict) else None
    if not isinstance(domain, str):
        return "(invalid)"
    return scorer.registry.resolve(domain) if domain in scorer.registry else domain


def _already_done(output: Path, input_lines: list[str]) -> tuple[int, list[dict[str, Any]]]:
    """Complete output lines of an interrupted run; a torn last line is cut off."""
    raw = output.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1] if b"\n" in raw else b""
    if len(complete) != len(raw):
        output.write_bytes(complete)
    done = [json.loads(line) for line in complete.decode().splitlines()]
    if len(done) > len(input_lines):
        raise ResumeMismatch(f"{output} has {len(done)} lines but the input only {len(input_lines)}")
    for n, (out, src) in enumerate(zip(done, input_lines), start=1):
        record, _ = parse_line(src, n)
        if isinstance(record, dict) and record.get("id") is not None and out.get("id") != record.get("id"):
            raise ResumeMismatch(f"line {n}: output id {out.get('id')!r} != input id {record.get('id')!r}: "
                                 "not the output of this input")
    return len(done), done


def _chunks(lines: list[str], start: int, size: int) -> Iterator[tuple[int, list[str]]]:
    for first in range(start, len(lines), size):
        yield first, lines[first:first + size]


def score_file(scorer: Scorer, input_path: Path, output_path: Path, *, resume: bool = False,
               batch_size: int = 512, progress: bool = True, out_stream: TextIO | None = None) -> RunSummary:
    """Score every line of ``input_path`` into ``output_path`` (same order, nothing dropped)."""
    started = time.perf_counter()
    lines = input_path.read_text().splitlines()
    summary = RunSummary()
    start = 0
    if resume and output_path.exists():
        start, done = _already_done(output_path, lines)
        summary.resumed = start
        for record in done:
            summary.add(_domain_of(record, scorer), record.get("reward"), record.get("status", "error"))
    bar = _progress(total=len(lines), initial=start, enabled=progress)
    wall_before = dict(scorer.domain_wall_s)
    with output_path.open("a" if start else "w") as out:
        for first, chunk in _chunks(lines, start, batch_size):
            records, scores = _score_chunk(scorer, chunk, first)
            for record, score in zip(records, scores):
                out.write(json.dumps(scored_record(record, score), ensure_ascii=False) + "\n")
                summary.add(_domain_of(record, scorer), score.reward, score.status.value)
            out.flush()
            bar.update(len(chunk))
    bar.close()
    for name, wall in scorer.domain_wall_s.items():
        if name in summary.domains:
            summary.domains[name].wall_s = wall - wall_before.get(name, 0.0)
    summary.wall_s = time.perf_counter() - started
    return summary


def _score_chunk(scorer: Scorer, chunk: list[str], first: int) -> tuple[list[Any], list[Score]]:
    records: list[Any] = []
    scores: list[Score | None] = []
    to_score: list[tuple[int, dict[str, Any]]] = []
    for offset, text in enumerate(chunk):
        line = first + offset + 1
        record, failure = parse_line(text, line) if text.strip() else ({"line": line}, Score.unscored(f"line {line}: empty line"))
        records.append(record)
        scores.append(failure)
        if failure is None:
            payload = dict(record) if isinstance(record, dict) else record
            if isinstance(payload, dict):
                payload.setdefault("id", str(line))
            to_score.append((offset, payload))
    samples = []
    for offset, payload in to_score:
        try:
            samples.append((offset, sample_from_record(payload, first + offset + 1)))
        except RecordError as exc:
            scores[offset] = Score.unscored(str(exc))
    for (offset, _), score in zip(samples, scorer.score_batch([s for _, s in samples])):
        scores[offset] = score
    missing = [first + i + 1 for i, s in enumerate(scores) if s is None]
    if missing:
        raise RuntimeError(f"lines {missing} got no score")
    return records, scores  # type: ignore[return-value]


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="rec", disable=not enabled, desc="scoring", dynamic_ncols=True)
