"""The CGPO paper's seven benchmarks (Table 1), plus Zebra and HiTab (Table 8), as ready-to-score items.

``load_benchmark(name, data_dir=None)`` returns a list of items, one per question, in a fixed
order. Each item is a plain dict (JSON-serializable) -- an mdreward ``Sample`` minus the response:

- ``id`` (str): ``"<benchmark>/<the dataset's own id>"``, stable across runs and machines
  (``math500/test/precalculus/807.json``, ``amc23/0``, ``humaneval/HumanEval/0``, ``mbpp/11``,
  ``gpqa_diamond/rec06pnAkLOr2t2mp``, ``supergpqa/<uuid>``, ``writingbench/<index>``).
- ``domain`` (str): the mdreward domain that scores it: ``math`` (MATH500, AMC23), ``code``
  (HumanEval, MBPP), ``choice`` (GPQA-diamond, SuperGPQA), ``writingbench`` (WritingBench); from plugin
  packages: ``logic`` (Zebra, ``zebra/<extra_info.index>``), ``table`` (HiTab, ``hitab/<extra_info.index>``).
- ``prompt`` (str): the user message, exactly as the model is asked (see ``*_PROMPT`` below).
- ``reference`` (str | None): math: the gold answer (LaTeX; AMC floats written as integers when
  whole, ``27.0`` -> ``"27"``); choice: the correct letter; code and writingbench: None; Zebra: the
  ``{"header", "rows"}`` table as JSON; HiTab: the answer, or answers joined with ``|``.
- ``tests`` (dict | None): code only, the code domain's assert form (docs/code.md):
  HumanEval ``{"assert": test, "entry_point": ep, "setup": prompt, "prefix": prompt}`` (one test,
  ``check(ep)``; ``prefix`` completes a body-only answer); MBPP
  ``{"assert": "\\n".join(test_list), "entry_point": <function the first assert calls>}`` plus
  ``"setup": test_setup_code`` when it is non-empty.
- ``metadata`` (dict): ``benchmark``, ``source`` (hub dataset@revision or the local file) and the
  benchmark's own fields; choice items carry ``options`` (the option texts in prompt order,
  which the ``choice`` domain needs) and ``answer_text``; WritingBench items carry ``criteria``
  (the query's own list of criteria, what the ``writingbench`` domain scores) and ``partial``.

Sources: by default the Hugging Face hub (``HUB`` pins dataset names and revisions; needs the
``datasets`` package and network access; GPQA is gated and needs a hub login). With ``data_dir``
the files are read in place from a folder laid out like the project's shared data folder:
``math500/test.jsonl``, ``amc23/test.jsonl``, ``humaneval/HumanEval.jsonl.gz``,
``mbpp/mbpp.jsonl``, ``gpqa/dataset.zip`` (the official password-protected archive, decrypted in
memory), ``supergpqa/SuperGPQA-all.jsonl`` (the published file) and ``writingbench/``
(``benchmark_all.jsonl`` when present, else the partial ``v2_current`` length subset; see
``WRITINGBENCH_FILES``). Decisions (docs/evaluation-data.md): MBPP is the test split, task_ids
11-510 (500 problems); GPQA options are ordered by a per-question permutation seeded with
SHA-256 of the record id; SuperGPQA and WritingBench take 200 items with the Guru recipe
(``random.seed(42)``, shuffle the indices, first 200) over the file order. Zebra and HiTab are Guru's
(``LLM360/guru-RL-92k``) test files, every row in file order; locally ``guru/offline_eval/<file>.parquet`` or
``.jsonl`` (``GURU_FILES``).
"""
from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import io
import json
import random
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from ..extract import OPTION_LETTERS as LETTERS
from ..types import Sample


class BenchmarkItem(TypedDict):
    id: str
    domain: str
    prompt: str
    reference: str | None
    tests: dict[str, str] | None
    metadata: dict[str, Any]


class BenchmarkDataError(ValueError):
    """A benchmark file is missing or a record breaks the format its loader expects."""


@dataclass(frozen=True)
class HubSource:
    """Where a benchmark lives on the Hugging Face hub (``data_files``: a raw file at a pinned commit)."""

    path: str
    split: str
    revision: str
    config: str | None = None
    data_files: str | None = None

    def describe(self) -> str:
        where = f" {self.data_files}" if self.data_files and self.path != "json" else ""
        return f"hub:{self.path}{'/' + self.config if self.config else ''}@{self.revision}{where} ({self.split})"


#: Pinned hub sources. Revisions are commit hashes where one could be verified offline; ``main``
#: otherwise (docs/evaluation-data.md says which: pin them with ``huggingface_hub.dataset_info``).
HUB: Mapping[str, HubSource] = {
    "math500": HubSource("HuggingFaceH4/MATH-500", "test", "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be"),
    "amc23": HubSource("zwhe99/amc23", "test", "main"),
    "humaneval": HubSource("openai/openai_humaneval", "test", "7dce6050a7d6d172f3cc5c32aa97f52fa1a2e544"),
    "mbpp": HubSource("google-research-datasets/mbpp", "test", "main", config="full"),
    "gpqa_diamond": HubSource("Idavidrein/gpqa", "train", "main", config="gpqa_diamond"),
    "supergpqa": HubSource("m-a-p/SuperGPQA", "train", "main"),
    "writingbench": HubSource("json", "train", "ae2d5176449b7b769815482641d35926f26793eb", data_files=(
        "https://raw.githubusercontent.com/X-PLUG/WritingBench/ae2d5176449b7b769815482641d35926f26793eb/"
        "benchmark_query/benchmark_all.jsonl")),
    # The six-domain experiment (Appendix F.2): Guru's filtered test files (Cheng et al., 2025).
    "zebra": HubSource("LLM360/guru-RL-92k", "train", "99b6793c4e57ad1bf4fecf737c098b8b7b50610b",
                       data_files="offline_eval/logic__zebra_puzzle_dataset_200.parquet"),
    "hitab": HubSource("LLM360/guru-RL-92k", "train", "main", data_files="offline_eval/table__hitab_300.parquet"),
}

#: The password of the official GPQA archive, as its README publishes it (not a secret: it only
#: keeps the questions out of web crawls; never write the decrypted files to disk).
GPQA_ZIP_PASSWORD = b"deserted-untie-orchid"
SAMPLE_SEED = 42
SAMPLE_SIZE = 200
#: Local WritingBench files, first found wins: the full query file, else the partial subset.
WRITINGBENCH_FILES = ("benchmark_all.jsonl", "v2_current/requirement/length/length_subset.jsonl")

MATH_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
HUMANEVAL_PROMPT = (
    "Complete the following Python function. Give the complete function, signature included, in one "
    "```python code block.\n\n```python\n{prompt}```"
)
MBPP_PROMPT = (
    "{text}\nYour code should pass these tests:\n\n{tests}\n\n"
    "Write the Python code in one ```python code block."
)
CHOICE_PROMPT = (
    "Answer the following multiple-choice question. There is exactly one correct option.\n\n"
    "{question}\n\n{options}\n\n"
    "Reason step by step, then give only the letter of the correct option within \\boxed{{}}, e.g. \\boxed{{A}}."
)


def sample_for(item: BenchmarkItem, response: str) -> Sample:
    """The mdreward ``Sample`` that scores ``response`` to ``item``."""
    return Sample(domain=item["domain"], response=response, reference=item["reference"], prompt=item["prompt"],
                  id=item["id"], tests=item["tests"], metadata=item["metadata"])


def seeded_sample(count: int, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> list[int]:
    """Guru's recipe: ``random.seed(seed)``, shuffle ``range(count)``, keep the first ``size`` (in that order).

    A private ``random.Random(seed)`` gives the same sequence as the global ``random.seed(seed)``.
    """
    indices = list(range(count))
    random.Random(seed).shuffle(indices)
    return indices[:size]


def option_permutation(key: str, count: int) -> list[int]:
    """A permutation of ``range(count)`` seeded by SHA-256 of ``key``: the same in every process and run."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def render_choices(question: str, options: Sequence[str]) -> str:
    """The multiple-choice prompt: the question, then ``A) text`` lines, then the answer instruction."""
    if not 2 <= len(options) <= len(LETTERS):
        raise BenchmarkDataError(f"a question needs 2 to {len(LETTERS)} options, got {len(options)}")
    lines = "\n".join(f"{LETTERS[i]}) {text}" for i, text in enumerate(options))
    return CHOICE_PROMPT.format(question=question.strip(), options=lines)


def number_text(value: Any) -> str:
    """A numeric answer as text: whole floats lose their ``.0`` (AMC stores ``27.0`` for 27)."""
    if isinstance(value, bool):
        raise BenchmarkDataError(f"answer {value!r} is not a number")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip().endswith(".0") and value.strip()[:-2].lstrip("+-").isdigit():
        return value.strip()[:-2]
    return str(value).strip()


# -- row sources ------------------------------------------------------------------------------------

def _hub_rows(name: str) -> tuple[list[dict[str, Any]], str]:
    source = HUB[name]
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise BenchmarkDataError(f"{name}: loading from the hub needs the 'datasets' package "
                                 "(pip install datasets), or pass data_dir") from exc
    kwargs: dict[str, Any] = {"split": source.split, "revision": source.revision}
    if source.data_files:
        kwargs = {"split": source.split, "data_files": source.data_files}
        if source.path != "json":  # a file inside a hub dataset repository: pin the repository's revision
            kwargs["revision"] = source.revision
    rows = load_dataset(source.path, source.config, **kwargs)
    return [dict(row) for row in rows], source.describe()


def _local(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise BenchmarkDataError(f"missing benchmark file {path}")
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise BenchmarkDataError(f"{path} line {number}: not JSON: {exc.msg}") from None
    return rows


def _field(row: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in row or row[key] is None:
        raise BenchmarkDataError(f"{where}: field {key!r} is missing")
    return row[key]


def _rows(name: str, data_dir: Path | None, relative: str) -> tuple[list[dict[str, Any]], str]:
    if data_dir is None:
        return _hub_rows(name)
    path = _local(data_dir, relative)
    return _jsonl(path), str(path)


# -- the seven benchmarks ---------------------------------------------------------------------------

def _math(name: str, rows: Iterable[Mapping[str, Any]], source: str, id_key: str,
          problem_keys: tuple[str, ...]) -> list[BenchmarkItem]:
    items = []
    for k, row in enumerate(rows):
        native = str(_field(row, id_key, f"{name} row {k}"))
        where = f"{name} record {native!r}"
        problem = next((row[key] for key in problem_keys if isinstance(row.get(key), str) and row[key].strip()), None)
        if problem is None:
            raise BenchmarkDataError(f"{where}: no problem text (fields {', '.join(problem_keys)})")
        reference = number_text(_field(row, "answer", where))
        extra = {key: row[key] for key in ("subject", "level", "url") if key in row}
        items.append(BenchmarkItem(id=f"{name}/{native}", domain="math", prompt=MATH_PROMPT.format(problem=problem),
                                   reference=reference, tests=None,
                                   metadata={"benchmark": name, "source": source, **extra}))
    return items


def load_math500(data_dir: Path | None = None) -> list[BenchmarkItem]:
    rows, source = _rows("math500", data_dir, "math500/test.jsonl")
    return _math("math500", rows, source, "unique_id", ("problem",))


def load_amc23(data_dir: Path | None = None) -> list[BenchmarkItem]:
    rows, source = _rows("amc23", data_dir, "amc23/test.jsonl")
    return _math("amc23", rows, source, "id", ("problem", "question"))


def load_humaneval(data_dir: Path | None = None) -> list[BenchmarkItem]:
    rows, source = _rows("humaneval", data_dir, "humaneval/HumanEval.jsonl.gz")
    items = []
    for k, row in enumerate(rows):
        native = str(_field(row, "task_id", f"humaneval row {k}"))
        where = f"humaneval record {native!r}"
        prompt, test, entry_point = (_field(row, key, where) for key in ("prompt", "test", "entry_point"))
        tests = {"assert": test, "entry_point": entry_point, "setup": prompt, "prefix": prompt}
        items.append(BenchmarkItem(id=f"humaneval/{native}", domain="code",
                                   prompt=HUMANEVAL_PROMPT.format(prompt=prompt), reference=None, tests=tests,
                                   metadata={"benchmark": "humaneval", "source": source, "entry_point": entry_point}))
    return items


def called_function(test: str) -> str | None:
    """The name of the first function an MBPP assert calls (the function under test)."""
    for node in ast.walk(ast.parse(test)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id
    return None


#: MBPP's test split: task_ids 11-510 (1-10 are the few-shot prompts, 511-600 validation, 601-974 train).
MBPP_TEST_IDS = range(11, 511)


def load_mbpp(data_dir: Path | None = None) -> list[BenchmarkItem]:
    rows, source = _rows("mbpp", data_dir, "mbpp/mbpp.jsonl")
    items = []
    for k, row in enumerate(rows):
        task_id = _field(row, "task_id", f"mbpp row {k}")
        if task_id not in MBPP_TEST_IDS:
            continue
        where = f"mbpp record {task_id!r}"
        test_list = _field(row, "test_list", where)
        if not isinstance(test_list, list) or not test_list:
            raise BenchmarkDataError(f"{where}: field 'test_list' must be a non-empty list of asserts")
        tests = {"assert": "\n".join(test_list), "entry_point": called_function(test_list[0]) or ""}
        if not tests["entry_point"]:
            raise BenchmarkDataError(f"{where}: the first assert calls no function")
        setup = row.get("test_setup_code") or ""
        if setup.strip():
            tests["setup"] = setup
        prompt = MBPP_PROMPT.format(text=str(_field(row, "text", where)).strip(), tests="\n".join(test_list))
        items.append(BenchmarkItem(id=f"mbpp/{task_id}", domain="code", prompt=prompt, reference=None, tests=tests,
                                   metadata={"benchmark": "mbpp", "source": source, "split": "test",
                                             "entry_point": tests["entry_point"]}))
    return items


def _choice_item(name: str, native: str, question: str, options: list[str], correct: int, source: str,
                 extra: Mapping[str, Any]) -> BenchmarkItem:
    return BenchmarkItem(id=f"{name}/{native}", domain="choice", prompt=render_choices(question, options),
                         reference=LETTERS[correct], tests=None,
                         metadata={"benchmark": name, "source": source, "options": options,
                                   "answer_text": options[correct], **extra})


def _gpqa_rows(data_dir: Path | None) -> tuple[list[dict[str, Any]], str]:
    if data_dir is None:
        return _hub_rows("gpqa_diamond")
    path = _local(data_dir, "gpqa/dataset.zip")
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read("dataset/gpqa_diamond.csv", pwd=GPQA_ZIP_PASSWORD).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, RuntimeError) as exc:
        raise BenchmarkDataError(f"{path}: cannot read dataset/gpqa_diamond.csv: {exc}") from None
    return list(csv.DictReader(io.StringIO(text))), f"{path}:dataset/gpqa_diamond.csv"


GPQA_OPTION_FIELDS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def load_gpqa_diamond(data_dir: Path | None = None) -> list[BenchmarkItem]:
    """GPQA-diamond; options in the order ``option_permutation("gpqa/<Record ID>", 4)`` gives."""
    rows, source = _gpqa_rows(data_dir)
    items = []
    for k, row in enumerate(rows):
        native = str(_field(row, "Record ID", f"gpqa_diamond row {k}")).strip()
        where = f"gpqa_diamond record {native!r}"
        texts = [str(_field(row, key, where)).strip() for key in GPQA_OPTION_FIELDS]
        order = option_permutation(f"gpqa/{native}", len(texts))
        options = [texts[i] for i in order]
        extra = {"high_level_domain": row.get("High-level domain"), "subdomain": row.get("Subdomain")}
        items.append(_choice_item("gpqa_diamond", native, str(_field(row, "Question", where)), options,
                                  order.index(0), source, extra))
    return items


def load_supergpqa(data_dir: Path | None = None) -> list[BenchmarkItem]:
    """SuperGPQA: 200 questions by the Guru recipe over the published file order; options A-J as given."""
    rows, source = _rows("supergpqa", data_dir, "supergpqa/SuperGPQA-all.jsonl")
    items = []
    for index in seeded_sample(len(rows)):
        row = rows[index]
        native = str(_field(row, "uuid", f"supergpqa row {index}"))
        where = f"supergpqa record {native!r}"
        options = [str(o).strip() for o in _field(row, "options", where)]
        letter = str(_field(row, "answer_letter", where)).strip().upper()
        if len(letter) != 1 or letter not in LETTERS[:len(options)]:
            raise BenchmarkDataError(f"{where}: answer_letter {letter!r} names none of its {len(options)} options")
        extra = {key: row.get(key) for key in ("discipline", "field", "subfield", "difficulty")}
        items.append(_choice_item("supergpqa", native, str(_field(row, "question", where)), options,
                                  LETTERS.index(letter), source, {**extra, "row": index}))
    return items


def _writingbench_rows(data_dir: Path | None) -> tuple[list[dict[str, Any]], str, bool]:
    if data_dir is None:
        rows, source = _hub_rows("writingbench")
        return rows, source, False
    for relative in WRITINGBENCH_FILES:
        path = data_dir / "writingbench" / relative
        if path.is_file():
            return _jsonl(path), str(path), relative != WRITINGBENCH_FILES[0]
    raise BenchmarkDataError(f"no WritingBench query file under {data_dir / 'writingbench'} "
                             f"(looked for {', '.join(WRITINGBENCH_FILES)})")


def load_writingbench(data_dir: Path | None = None) -> list[BenchmarkItem]:
    """200 WritingBench queries (Guru recipe, seed 42) over the file order, each with its own criteria.

    ``metadata["partial"]`` is True when only the partial local subset was available: the sample
    is then drawn from it (a stand-in, not the paper's 200 queries).
    """
    rows, source, partial = _writingbench_rows(data_dir)
    items = []
    for index in seeded_sample(len(rows)):
        row = rows[index]
        native = str(_field(row, "index", f"writingbench row {index}"))
        where = f"writingbench record {native!r}"
        criteria = row.get("checklist", row.get("criteria"))
        if not isinstance(criteria, list) or not criteria:
            raise BenchmarkDataError(f"{where}: no criteria (fields 'checklist' or 'criteria')")
        query = str(_field(row, "query", where))
        items.append(BenchmarkItem(id=f"writingbench/{native}", domain="writingbench", prompt=query, reference=None,
                                   tests=None, metadata={"benchmark": "writingbench", "source": source,
                                                         "criteria": criteria, "partial": partial,
                                                         "domain1": row.get("domain1"), "domain2": row.get("domain2")}))
    return items


# -- the six-domain experiment's logic and tabular test sets (domains from plugins) -------------------

#: Local copies of Guru's files: ``<data_dir>/guru/offline_eval/<name>.parquet`` (or ``.jsonl``).
GURU_FILES = {"zebra": "guru/offline_eval/logic__zebra_puzzle_dataset_200",
              "hitab": "guru/offline_eval/table__hitab_300"}
#: The mdreward domain (from a plugin package) that scores each Guru benchmark.
GURU_DOMAINS = {"zebra": "logic", "hitab": "table"}


def _parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BenchmarkDataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from exc
    try:
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as exc:
        raise BenchmarkDataError(f"{path}: not a readable parquet file: {exc}") from None
    return rows


def _guru_rows(name: str, data_dir: Path | None) -> tuple[list[dict[str, Any]], str]:
    if data_dir is None:
        return _hub_rows(name)
    stem = data_dir / GURU_FILES[name]
    for suffix, reader in ((".parquet", _parquet), (".jsonl", _jsonl)):
        path = stem.with_name(stem.name + suffix)
        if path.is_file():
            return reader(path), str(path)
    raise BenchmarkDataError(f"missing benchmark file {stem}.parquet (or {stem.name}.jsonl)")


def guru_prompt(row: Mapping[str, Any], where: str) -> str:
    """The user message of a Guru row (``prompt`` is a list of chat messages; the last user one is the question)."""
    messages = _field(row, "prompt", where)
    if isinstance(messages, str):
        return messages
    users = [m.get("content") for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str) or not users[-1].strip():
        raise BenchmarkDataError(f"{where}: field 'prompt' has no user message")
    return users[-1]


def guru_ground_truth(row: Mapping[str, Any], where: str) -> Any:
    """``reward_model.ground_truth`` (a JSON string in Guru's compressed variant is decoded)."""
    reward_model = _field(row, "reward_model", where)
    if isinstance(reward_model, str):
        try:
            reward_model = json.loads(reward_model)
        except json.JSONDecodeError:
            raise BenchmarkDataError(f"{where}: field 'reward_model' is not JSON") from None
    if not isinstance(reward_model, Mapping):
        raise BenchmarkDataError(f"{where}: field 'reward_model' must be an object")
    return _field(reward_model, "ground_truth", f"{where} reward_model")


def zebra_reference(truth: Any, where: str) -> str:
    """The logic domain's Zebra reference: ``{"header": [...], "rows": [[...], ...]}`` as JSON."""
    if isinstance(truth, str):
        try:
            truth = json.loads(truth)
        except json.JSONDecodeError:
            raise BenchmarkDataError(f"{where}: reward_model.ground_truth is not a JSON table") from None
    header = truth.get("header") if isinstance(truth, Mapping) else None
    rows = truth.get("rows") if isinstance(truth, Mapping) else None
    if not (isinstance(header, list) and header and isinstance(rows, list) and rows
            and all(isinstance(r, list) and len(r) == len(header) for r in rows)):
        raise BenchmarkDataError(f"{where}: reward_model.ground_truth must be a table with 'header' and 'rows' "
                                 "of the header's length")
    return json.dumps({"header": header, "rows": rows})


def hitab_reference(truth: Any, where: str) -> str:
    """The table domain's reference: one answer, or several joined with ``|`` (HiTab's multi-cell answers)."""
    answers = [truth] if isinstance(truth, (str, int, float)) and not isinstance(truth, bool) else truth
    if not isinstance(answers, list) or not answers:
        raise BenchmarkDataError(f"{where}: reward_model.ground_truth must be an answer or a list of answers")
    texts = [number_text(a) if isinstance(a, (int, float)) else str(a).strip() for a in answers]
    if any(not t or (len(texts) > 1 and "|" in t) for t in texts):
        raise BenchmarkDataError(f"{where}: reward_model.ground_truth has an empty answer or an item with '|'")
    return "|".join(texts)


def _guru(name: str, reference_of: Callable[[Any, str], str], data_dir: Path | None) -> list[BenchmarkItem]:
    rows, source = _guru_rows(name, data_dir)
    items, seen = [], set()
    for k, row in enumerate(rows):
        extra = row.get("extra_info")
        extra = extra if isinstance(extra, Mapping) else {}
        native = str(extra["index"]) if extra.get("index") is not None else str(k)
        where = f"{name} record {native!r}"
        if native in seen:
            raise BenchmarkDataError(f"{where}: extra_info.index repeats an earlier record")
        seen.add(native)
        reference = reference_of(guru_ground_truth(row, where), where)
        items.append(BenchmarkItem(id=f"{name}/{native}", domain=GURU_DOMAINS[name], prompt=guru_prompt(row, where),
                                   reference=reference, tests=None,
                                   metadata={"benchmark": name, "source": source, "row": k,
                                             "data_source": row.get("data_source")}))
    return items


def load_zebra(data_dir: Path | None = None) -> list[BenchmarkItem]:
    """Guru's Zebra puzzle test file, every row in file order (scored by the ``logic`` plugin domain)."""
    return _guru("zebra", zebra_reference, data_dir)


def load_hitab(data_dir: Path | None = None) -> list[BenchmarkItem]:
    """Guru's HiTab test file, every row in file order (scored by the ``table`` plugin domain)."""
    return _guru("hitab", hitab_reference, data_dir)


BENCHMARKS: Mapping[str, Callable[[Path | None], list[BenchmarkItem]]] = {
    "math500": load_math500, "amc23": load_amc23, "humaneval": load_humaneval, "mbpp": load_mbpp,
    "gpqa_diamond": load_gpqa_diamond, "supergpqa": load_supergpqa, "writingbench": load_writingbench,
    "zebra": load_zebra, "hitab": load_hitab,
}


def load_benchmark(name: str, data_dir: str | Path | None = None) -> list[BenchmarkItem]:
    """The items of benchmark ``name`` (see ``BENCHMARKS``), from the hub or from ``data_dir``."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    items = BENCHMARKS[name](None if data_dir is None else Path(data_dir))
    if not items:
        raise BenchmarkDataError(f"{name}: no items loaded")
    return items
