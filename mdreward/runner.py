"""Score a JSONL file into another, in order, resumable, with a per-domain summary."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .records import RecordError, json_line, parse_line, sample_from_record, scored_record, without_surrogates
from .scoring import Scorer
from .types import Score, Status

#: Output field holding the fingerprint of the input line a record came from (``--resume`` checks it).
FINGERPRINT_FIELD = "input_sha256"


@dataclass
class DomainSummary:
    records: int = 0
    reward_sum: float = 0.0
    scored: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Status})
    wall_s: float = 0.0
    correct: int = 0
    #: Records marked right or wrong (``components.correct``); writing domains grade instead.
    marked: int = 0

    def add(self, reward: float | None, status: str, components: Any = None) -> None:
        self.records += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if reward is not None:
            self.scored += 1
            self.reward_sum += reward
        correct = components.get("correct") if isinstance(components, Mapping) else None
        if isinstance(correct, bool):
            self.marked += 1
            self.correct += correct

    @property
    def mean_reward(self) -> float | None:
        return self.reward_sum / self.scored if self.scored else None

    @property
    def accuracy(self) -> float | None:
        """Correct records over all records (format errors and unscored count as not correct), or None
        when the domain marks no record right or wrong."""
        return self.correct / self.records if self.marked else None


#: Summary columns: (header, meaning). The legend printed under the table repeats the meanings.
COLUMNS = (
    ("domain", ""),
    ("records", ""),
    ("mean reward", "over records with a reward"),
    ("correct", "records marked correct, of all records ('-': the domain grades, it marks no right/wrong)"),
    ("checked", "status ok: the answer was checked, right or wrong"),
    ("format error", "status format_error: rewarded with the format penalty"),
    ("unscored", "status error: no reward (bad record or infrastructure failure)"),
    ("wall s", "time spent in the domain"),
)


@dataclass
class RunSummary:
    domains: dict[str, DomainSummary] = field(default_factory=dict)
    resumed: int = 0
    wall_s: float = 0.0

    def add(self, domain: str, reward: float | None, status: str, components: Any = None) -> None:
        self.domains.setdefault(domain, DomainSummary()).add(reward, status, components)

    def table(self) -> str:
        header = tuple(name for name, _ in COLUMNS)
        rows = []
        for name in sorted(self.domains):
            d = self.domains[name]
            mean = f"{d.mean_reward:+.3f}" if d.mean_reward is not None else "-"
            accuracy = f"{100 * d.accuracy:.1f}%" if d.accuracy is not None else "-"
            rows.append((name, str(d.records), mean, accuracy, _share(d, "ok"), _share(d, "format_error"),
                         _share(d, "error"), f"{d.wall_s:.2f}"))
        total = sum(d.records for d in self.domains.values())
        rows.append(("total", str(total), "", "", "", "", "", f"{self.wall_s:.2f}"))
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, rows)]
        lines += [f"  {name}: {meaning}" for name, meaning in COLUMNS if meaning]
        if self.resumed:
            lines.append(f"(resumed: {self.resumed} records were already scored and were not scored again)")
        return "\n".join(lines)


def _share(d: DomainSummary, status: str) -> str:
    return f"{100 * d.by_status.get(status, 0) / d.records:.1f}%"


class ResumeMismatch(RuntimeError):
    """The existing output does not belong to this input."""


def _domain_of(record: Any, scorer: Scorer) -> str:
    """The summary row of a record: its registered domain's full name, else what it said."""
    domain = record.get("domain") if isinstance(record, dict) else None
    if not isinstance(domain, str):
        return "(invalid)"
    return scorer.registry.resolve(domain) if domain in scorer.registry else without_surrogates(domain)


def fingerprint(line: bytes) -> str:
    """The fingerprint of one raw input line (a trailing CR ignored): 16 hex digits of its SHA-256."""
    return hashlib.sha256(line.removesuffix(b"\r")).hexdigest()[:16]


def input_lines(path: Path) -> list[bytes]:
    """The raw lines of a JSONL file, split on ``\\n`` only (U+2028, U+0085 ... inside strings are text)."""
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _already_done(output: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    """The complete output records of an interrupted run, each checked against its input line's
    fingerprint; a torn last line is cut off."""
    raw = output.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        output.write_bytes(complete)
    done_lines = complete.split(b"\n")[:-1]
    if len(done_lines) > len(lines):
        raise ResumeMismatch(f"{output} has {len(done_lines)} lines but the input only {len(lines)}")
    done = []
    for n, (text, source) in enumerate(zip(done_lines, lines), start=1):
        try:
            record = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            raise ResumeMismatch(f"{output} line {n} is not JSON: not written by mdreward score") from None
        if not isinstance(record, dict) or FINGERPRINT_FIELD not in record:
            raise ResumeMismatch(f"{output} line {n} has no {FINGERPRINT_FIELD!r} (not written by this version of "
                                 "mdreward score); rerun with --overwrite")
        if record[FINGERPRINT_FIELD] != fingerprint(source):
            raise ResumeMismatch(f"input line {n} changed since {output} was written (its fingerprint differs): "
                                 "its result would be stale; rerun with --overwrite")
        done.append(record)
    return done


def _chunks(lines: list[bytes], start: int, size: int) -> Iterator[tuple[int, list[bytes]]]:
    for first in range(start, len(lines), size):
        yield first, lines[first:first + size]


def score_file(scorer: Scorer, input_path: Path, output_path: Path, *, resume: bool = False,
               batch_size: int = 512, progress: bool = True) -> RunSummary:
    """Score every line of ``input_path`` into ``output_path`` (same order, nothing dropped).

    Output goes out batch by batch; on KeyboardInterrupt the file is cut back to the last whole
    batch before the interrupt propagates, so ``resume=True`` continues it exactly."""
    started = time.perf_counter()
    lines = input_lines(input_path)
    summary = RunSummary()
    start = 0
    if resume and output_path.exists():
        done = _already_done(output_path, lines)
        start = summary.resumed = len(done)
        for record in done:
            summary.add(_domain_of(record, scorer), record.get("reward"), record.get("status", "error"),
                        record.get("components"))
    bar = _progress(total=len(lines), initial=start, enabled=progress)
    wall_before = dict(scorer.domain_wall_s)
    with output_path.open("ab" if start else "wb") as out:
        committed = out.tell()
        try:
            for first, chunk in _chunks(lines, start, batch_size):
                records, scores = _score_chunk(scorer, chunk, first)
                text = []
                for record, score, source in zip(records, scores, chunk):
                    text.append(json_line({**scored_record(record, score), FINGERPRINT_FIELD: fingerprint(source)}))
                    summary.add(_domain_of(record, scorer), score.reward, score.status.value, score.components)
                out.write("".join(text).encode("utf-8"))
                out.flush()
                committed = out.tell()
                bar.update(len(chunk))
        except KeyboardInterrupt:
            out.close()
            os.truncate(output_path, committed)  # no torn batch: the file ends at a record boundary
            raise
        finally:
            bar.close()
    for name, wall in scorer.domain_wall_s.items():
        if name in summary.domains:
            summary.domains[name].wall_s = wall - wall_before.get(name, 0.0)
    summary.wall_s = time.perf_counter() - started
    return summary


def _decode(raw: bytes, line: int) -> tuple[str | None, Score | None]:
    try:
        return raw.decode("utf-8-sig" if line == 1 else "utf-8"), None
    except UnicodeDecodeError as exc:
        return None, Score.unscored(f"line {line}: not valid UTF-8 (byte {exc.start + 1}: {exc.reason})")


def _score_chunk(scorer: Scorer, chunk: list[bytes], first: int) -> tuple[list[Any], list[Score]]:
    records: list[Any] = []
    scores: list[Score | None] = []
    to_score: list[tuple[int, dict[str, Any]]] = []
    for offset, raw in enumerate(chunk):
        line = first + offset + 1
        text, failure = _decode(raw, line)
        record: Any = {"line": line}
        if text is not None and not text.strip():
            failure = Score.unscored(f"line {line}: empty line")
        elif text is not None:
            record, failure = parse_line(text, line)
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
