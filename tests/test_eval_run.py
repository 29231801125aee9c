"""`nudge-local eval` end to end on generated models: a gamma sweep with every mode, its results, report
and plot; nothing lost or written twice across a kill -9 and --resume; a changed setting against an
existing run is one sentence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nudge_local.bench.synthetic import CHATML, Table, bpe_vocab, write_model
from nudge_local.engine.errors import NudgeError
from nudge_local.evaluate.data import TASKS, load_items, render_question
from nudge_local.evaluate.run import EVAL_MODES, Results, check_manifest, parse_modes, row_key
from nudge_local.evaluate.scoring import score

ROOT = Path(__file__).resolve().parents[1]
V = bpe_vocab(0)


def tok(piece: str) -> int:
    t = V.find(piece.encode())
    assert t is not None, piece
    return t


THE, ONE, TWO, THREE, DOT = map(tok, [" the", " 1", " 2", " 3", "."])
EOS = V.eos
# The base writes " the", then is torn between " 2" (a little likelier: top-1 0.38) and " 1", " 3";
# below gamma 0.38 it writes " the 2.", above it the nudger's word " 3." goes in. The nudger alone
# writes " the 3.".
BASE = Table(
    rows={THE: {TWO: 0.2, ONE: 0.0, THREE: 0.0}, TWO: {DOT: 5.0}, ONE: {DOT: 5.0}, THREE: {DOT: 5.0}, DOT: {EOS: 5.0}},
    default={THE: 5.0},
)
NUDGER = Table(rows={THE: {THREE: 5.0}, THREE: {DOT: 5.0}, DOT: {EOS: 5.0}}, default={THE: 5.0})
# A base that never stops: " the 2 the 2 ..." (slow enough runs for the kill test).
LOOP = Table(rows={THE: {TWO: 5.0}, TWO: {THE: 5.0}}, default={THE: 5.0})
GOLDS = ["#### 3", "#### 2", "Half of 6 is 3.\n#### 3", "#### 7"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval-models")
    data = d / "gsm8k.jsonl"
    lines = [{"question": f"Question number {i}: how many apples?", "answer": g} for i, g in enumerate(GOLDS)]
    data.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return {
        "base": write_model(d / "base.gguf", V, BASE),
        "nudger": write_model(d / "nudger.gguf", V, NUDGER, chat_template=CHATML),
        "loop": write_model(d / "loop.gguf", V, LOOP),
        "data": data,
    }


def cli(*args, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nudge_local.cli", "eval", *map(str, args), "--threads", "1", "--ctx", "2048"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_sweep_end_to_end(pair, tmp_path):
    out = tmp_path / "run"
    r = cli("gsm8k", "--data", pair["data"], "--base", pair["base"], "--nudge", pair["nudger"],
            "--modes", ",".join(EVAL_MODES), "--gamma", "0.5,0.3", "--max-tokens", "16", "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    rows = rows_of(out)
    # base, nudger and urial once; nudged and paper at each gamma
    assert len(rows) == len(GOLDS) * (3 + 2 * 2)
    assert len({row_key(x) for x in rows}) == len(rows)
    by = {(x["mode"], x["gamma"], x["id"]): x for x in rows}
    for i in range(len(GOLDS)):
        i = str(i)
        assert by[("base", None, i)]["answer"] == "the 2."  # shown without the base's leading space
        assert by[("nudger", None, i)]["answer"] == "the 3."
        assert by[("nudged", 0.3, i)]["answer"] == "the 2."  # the base's top-1 0.38 is above gamma
        assert by[("nudged", 0.5, i)]["answer"] == "the 3."
        assert by[("nudged", 0.5, i)]["nudging_words"] == ["3."]
        assert by[("nudged", 0.5, i)]["nudge_tokens"] == 2
        assert by[("nudged", 0.3, i)]["nudging_words"] == []
        assert by[("paper", 0.5, i)]["nudging_words"] == ["the", "3."]  # the nudger's whole draft, word by word
        assert by[("urial", None, i)]["answer"] == "the 2."
    items = {x.id: x for x in load_items(TASKS["gsm8k"], str(pair["data"]))}
    for x in rows:
        assert x["correct"] == score(TASKS["gsm8k"], items[x["id"]], x["answer"])
        assert x["question"] == render_question(TASKS["gsm8k"], items[x["id"]], "Question: ")
        assert set(x["branching"]) == {"writing", "base"}
    assert [by[("nudged", 0.5, str(i))]["correct"] for i in range(4)] == [True, False, True, False]
    assert [by[("base", None, str(i))]["correct"] for i in range(4)] == [False, True, False, False]
    assert {x["cut"] for x in rows} == {False}  # every answer ended by itself (end of turn, or paper's stops)
    # stderr is not a terminal here: a plain progress line as each mode and gamma finishes
    lines = r.stderr.splitlines()
    assert "base: 4/4, acc 25%" in lines and "nudged top1 γ=0.5: 4/4, acc 50%  nudged 67%" in lines, r.stderr
    assert "urial: 4/4, acc 25%" in lines and "\x1b[" not in r.stderr

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary  # the report's own figures are checked in test_eval_report.py; here: it was written
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "gamma.png" in report and "nudged" in report
    png = (out / "gamma.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["modes"] == list(EVAL_MODES) and manifest["gates"] == {"top1": [0.3, 0.5]}
    assert {x["gate"] for x in rows if x["mode"] in ("nudged", "paper")} == {"top1"}
    assert {x["gate"] for x in rows if x["mode"] not in ("nudged", "paper")} == {None}
    assert manifest["settings"]["system"] == "Answer the question by walking through the reasoning steps."
    assert manifest["settings"]["max_tokens"] == 16 and manifest["settings"]["seed"] == 609
    assert not list(out.glob(".*.tmp"))

    # the same run again: nothing to do, nothing written twice
    again = cli("gsm8k", "--data", pair["data"], "--base", pair["base"], "--nudge", pair["nudger"],
                "--modes", ",".join(EVAL_MODES), "--gamma", "0.5,0.3", "--max-tokens", "16", "--out", out,
                "--resume")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert rows_of(out) == rows


def test_answers_cut_by_the_length_limit_are_flagged_counted_and_reported(pair, tmp_path):
    """The looping base writes " the 2 the 2 the" until --max-tokens: every answer is cut, scored by
    its last number all the same (right for the gold 2), and flagged, counted and reported so."""
    out = tmp_path / "run"
    r = cli("gsm8k", "--data", pair["data"], "--base", pair["loop"], "--modes", "base", "--max-tokens", "5",
            "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = rows_of(out)
    assert [(x["stop_reason"], x["cut"]) for x in rows] == [("length", True)] * len(GOLDS)
    assert [x["correct"] for x in rows] == [False, True, False, False]  # the paper's rule: the last number
    assert "base: 4/4, acc 25%  cut 4" in r.stderr.splitlines(), r.stderr
    (g,) = json.loads((out / "summary.json").read_text(encoding="utf-8"))["groups"]
    assert (g["accuracy"], g["cut"], g["ended"]["scored"], g["ended"]["accuracy"]) == (0.25, 4, 0, None)
    assert "| 4 (100.0%) | – |" in (out / "report.md").read_text(encoding="utf-8")


def test_prompts_are_the_papers(pair, tmp_path):
    """The nudger's user message is "Question: ..." under the paper's system prompt; the base's prompt
    is the base format around the question (read back through the nudger-only answer's prompt)."""
    from nudge_local.engine.local import Model
    from nudge_local.evaluate.run import EvalConfig, Job, prompts_for

    task = TASKS["gsm8k"]
    items = load_items(task, str(pair["data"]))
    cfg = EvalConfig(
        task=task, items=items, modes=["nudged"], gates={"top1": [0.4]}, system=task.system, prefix=task.prefix
    )
    nudger = Model(pair["nudger"], role="nudger", n_ctx=512, n_threads=1)
    try:
        p = prompts_for(Job(items[0], "nudged", "top1", 0.4), cfg, None, nudger)
    finally:
        nudger.close()
    q = items[0].question
    assert p.base == f"{task.system}\nQuestion: {q}\nAnswer:"
    assert p.nudge == (
        f"<|im_start|>system\n{task.system}<|im_end|>\n<|im_start|>user\nQuestion: {q}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    u = prompts_for(Job(items[0], "urial", None, None), cfg, None, None)
    assert u.nudge is None and u.base.endswith(
        f"# Query:\n```\n{task.system}\n\nQuestion: {q}\n```\n\n# Answer:\n```\n"
    )


def test_kill_9_then_resume_loses_nothing_and_writes_nothing_twice(pair, tmp_path):
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": "#### 2"}) + "\n" for i in range(40)))
    out = tmp_path / "run"
    args = ["gsm8k", "--data", data, "--base", pair["loop"], "--modes", "base", "--max-tokens", "400", "--out", out]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nudge_local.cli", "eval", *map(str, args), "--threads", "1", "--ctx", "2048"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or results.read_bytes().count(b"\n") < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = results.read_bytes()
    n_before = before.count(b"\n")
    assert 3 <= n_before < 40, n_before  # killed mid-run
    # a line cut by the kill, as if it had come in the middle of a write
    with open(results, "ab") as f:
        f.write(b'{"id": "99", "mode": "base", "gam')
    r = cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert "cut short" in r.stderr
    after = results.read_bytes()
    assert after.startswith(before)  # every line written before the kill is kept as it was
    rows = [json.loads(line) for line in after.decode().splitlines()]
    assert sorted(int(x["id"]) for x in rows) == list(range(40))  # each item once
    assert all(x["tokens"] == 400 and x["correct"] for x in rows)


def test_changed_setting_against_existing_run_is_one_sentence(pair, tmp_path):
    out = tmp_path / "run"
    base = ["gsm8k", "--data", pair["data"], "--base", pair["base"], "--modes", "base", "--out", out]
    assert cli(*base, "--max-tokens", "8").returncode == 0
    kept = (out / "results.jsonl").read_bytes()
    for extra, phrase in (
        (["--max-tokens", "9", "--resume"], "max_tokens 8, and this one has 9"),
        (["--max-tokens", "8"], "already holds results; give --resume"),
        (["--max-tokens", "8", "--resume", "--nudge", pair["base"], "--modes", "base"], None),
        (["--max-tokens", "8", "--resume", "--base", pair["loop"]], "holds a run with base"),
    ):
        r = cli(*base, *extra)
        if phrase is None:  # an unused nudger does not change the run
            assert r.returncode == 0, r.stderr
            continue
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nudge-local: error:") and phrase in lines[0], r.stderr
    assert (out / "results.jsonl").read_bytes() == kept


def test_resume_adds_modes_and_gammas(pair, tmp_path):
    out = tmp_path / "run"
    common = ["gsm8k", "--data", pair["data"], "--base", pair["base"], "--nudge", pair["nudger"], "--out", out]
    assert cli(*common, "--modes", "base", "--max-tokens", "8").returncode == 0
    first = rows_of(out)
    r = cli(*common, "--modes", "base,nudged", "--gamma", "0.5", "--max-tokens", "8", "--resume")
    assert r.returncode == 0, r.stderr
    rows = rows_of(out)
    assert rows[: len(first)] == first and len(rows) == 2 * len(GOLDS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["modes"] == ["base", "nudged"]


def test_results_file_repairs_a_cut_line_and_refuses_a_bad_one(tmp_path):
    p = tmp_path / "results.jsonl"
    good = json.dumps({"id": "1", "mode": "base", "gamma": None}) + "\n"
    p.write_text(good + '{"id": "2", "mo')
    r = Results(p)
    assert r.cut and len(r.rows) == 1 and p.read_text() == good
    r.append({"id": "2", "mode": "base", "gamma": None})
    assert Results(p).keys() == {("1", "base", None, None), ("2", "base", None, None)} and not Results(p).cut
    p.write_text(good + "not json\n" + good)
    with pytest.raises(NudgeError, match=r"results.jsonl:2 is not a result line"):
        Results(p)


def test_manifest_check(tmp_path):
    m = {"task": "gsm8k", "data_sha256": "a", "base": "b", "nudger": "n", "settings": {"seed": 1}, "judge": None,
         "modes": ["base"], "gammas": [0.4]}  # fmt: skip
    assert check_manifest(tmp_path, m, resume=True) == m  # nothing there yet
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "results.jsonl").write_text("{}\n")
    # the old manifest ran top1 at "gammas"; this run adds a top1 gamma and another gate
    new = {**m, "modes": ["nudged"], "gates": {"top1": [0.2], "entropy": [2.0]}}
    del new["gammas"]
    merged = check_manifest(tmp_path, new, resume=True)
    assert merged["modes"] == ["base", "nudged"] and "gammas" not in merged
    assert merged["gates"] == {"top1": [0.2, 0.4], "entropy": [2.0]}
    with pytest.raises(NudgeError, match="data_sha256"):
        check_manifest(tmp_path, {**m, "data_sha256": "z"}, resume=True)
    with pytest.raises(NudgeError, match="seed 1, and this one has 2"):
        check_manifest(tmp_path, {**m, "settings": {"seed": 2}}, resume=True)


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--modes", "base,bogus"], "option --modes takes"),
        (["--gamma", "0.2,1.5"], "the top1 gate's threshold is a probability from 0 to 1 (got 1.5)"),
        (["--gamma", "0.2,x"], "option --gamma takes thresholds as a comma-separated list"),
        (["--gamma", "top1="], "option --gamma takes thresholds as a comma-separated list"),
        (["--gamma", "entropy=-1"], "a threshold is at least 0 (got -1 for the entropy gate)"),
        (["--gamma", "margin=1.5;entropy=2"], "the margin gate's threshold is a probability from 0 to 1"),
        (["--gamma", "topp=0.2"], "option --gamma names the gate 'topp'; the gates are top1, margin, entropy"),
        (["--gate", "top1,bogus"], "option --gate takes a comma-separated list of top1, margin, entropy"),
        (["--gate", "top1", "--gamma", "entropy=2"], "thresholds for the entropy gate; add it to --gate"),
        (["--gate", "margin", "--modes", "paper"], "Paper mode keeps the paper's gate, top1"),
        (["--gate", "top1,entropy", "--modes", "base,paper"], "The entropy gate runs in nudged mode only"),
        (["--limit", "0"], "option --limit must be"),
        (["--field", "question"], "option --field takes NAME=KEY"),
        (["--judge-model", "gpt-4o-mini"], "option --judge-model describes the judge; give --judge too"),
        (["--judge", "judge.gguf", "--judge-model", "m"], "option --judge-model names a served model"),
    ],
)
def test_bad_options_are_one_sentence(pair, tmp_path, flags, phrase):
    r = cli("gsm8k", "--data", pair["data"], "--base", pair["base"], "--nudge", pair["nudger"], "--out", tmp_path,
            *flags)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0], r.stderr


def test_parsers():
    assert parse_modes("nudged, base,nudged") == ["nudged", "base"]


def test_choice_task_with_a_judge(pair, tmp_path):
    """The command's --judge path: every row carries the judge's verdict beside the rule's, and the
    report gives both with their agreement."""
    from test_eval_judge import write_judge_model

    judge = write_judge_model(tmp_path / "judge-yes.gguf", 1)
    data = tmp_path / "arc.jsonl"
    items = [
        {"id": f"q{i}", "question": f"Which is {i}?", "choices": {"text": ["one", "two", "three"],
         "label": ["A", "B", "C"]}, "answerKey": "B"}
        for i in range(3)
    ]  # fmt: skip
    data.write_text("".join(json.dumps(x) + "\n" for x in items))
    out = tmp_path / "run"
    r = cli("choice", "--data", data, "--base", pair["base"], "--modes", "base", "--max-tokens", "8",
            "--judge", judge, "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = rows_of(out)
    assert [x["answer"] for x in rows] == ["the 2."] * 3  # no letter: the rule says wrong
    assert [(x["correct"], x["judge"]) for x in rows] == [(False, True)] * 3
    assert rows[0]["question"] == "Question: Which is 0?\nA. one\nB. two\nC. three"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["judge"] == "judge-yes.gguf"
    group = json.loads((out / "summary.json").read_text())["groups"][0]
    assert group["accuracy"] == 0 and group["judge"]["accuracy"] == 1
    assert group["judge"]["agreement"]["agree"] == 0
    # another judge against the same folder is one sentence
    other = write_judge_model(tmp_path / "judge-no.gguf", 0)
    r = cli("choice", "--data", data, "--base", pair["base"], "--modes", "base", "--max-tokens", "8",
            "--judge", other, "--out", out, "--resume")  # fmt: skip
    assert r.returncode == 2 and "holds a run with judge 'judge-yes.gguf'" in r.stderr, r.stderr


def test_judge_on_a_server_with_several_models_by_judge_model(pair, tmp_path):
    """--judge URL --judge-model NAME: the named model judges (through the server's chat API) and
    the manifest names it."""
    from engines import llama_cpp_python_multi_server
    from test_eval_judge import write_judge_model

    models = {"yes": write_judge_model(tmp_path / "y.gguf", 1), "no": write_judge_model(tmp_path / "n.gguf", 0)}
    server = llama_cpp_python_multi_server(models, tmp_path)
    args = ["gsm8k", "--data", pair["data"], "--base", pair["base"], "--modes", "base", "--max-tokens", "8",
            "--judge", server.url]  # fmt: skip
    try:
        r = cli(*args, "--out", tmp_path / "a")
        assert r.returncode == 2 and "name one with --judge-model" in r.stderr, r.stderr
        r = cli(*args, "--judge-model", "no", "--out", tmp_path / "b")
        assert r.returncode == 0, r.stderr
    finally:
        server.stop()
    assert {x["judge"] for x in rows_of(tmp_path / "b")} == {False}
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["judge"] == "no"


def test_judge_by_hub_reference_from_the_cache(pair, tmp_path):
    """--judge org/repo:file.gguf reads the Hugging Face cache (offline here); absent, one sentence."""
    from test_catalog_hub import _put_in_hub_cache
    from test_eval_judge import write_judge_model

    cache = tmp_path / "hub"
    _put_in_hub_cache(cache, "someone/judge", "judge.gguf", write_judge_model(tmp_path / "j.gguf", 0))
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    args = ["gsm8k", "--data", pair["data"], "--base", pair["base"], "--modes", "base", "--max-tokens", "8"]

    def judged(judge, out):
        cmd = [sys.executable, "-m", "nudge_local.cli", "eval", *map(str, args), "--out", out, "--judge", judge]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)

    r = judged("someone/judge:judge.gguf", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert {x["judge"] for x in rows_of(tmp_path / "a")} == {False}
    r = judged("someone/absent:judge.gguf", tmp_path / "b")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "someone/absent" in r.stderr, r.stderr


def test_open_task_has_answers_and_nudge_figures_only(pair, tmp_path):
    data = tmp_path / "justeval.jsonl"
    data.write_text("".join(json.dumps({"id": f"j{i}", "instruction": f"Write a line {i}."}) + "\n" for i in range(3)))
    out = tmp_path / "run"
    r = cli("open", "--data", data, "--base", pair["base"], "--nudge", pair["nudger"], "--modes", "base,nudged",
            "--gamma", "0.5", "--max-tokens", "8", "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = rows_of(out)
    assert {x["correct"] for x in rows} == {None} and {x["gold"] for x in rows} == {None}
    nudged = [x for x in rows if x["mode"] == "nudged"]
    assert [x["answer"] for x in nudged] == ["the 3."] * 3 and nudged[0]["question"] == "Write a line 0."
    groups = json.loads((out / "summary.json").read_text())["groups"]
    assert [g["accuracy"] for g in groups] == [None, None]
    assert [round(g["nudge_ratio"], 4) for g in groups] == [0.0, round(2 / 3, 4)]
    assert json.loads((out / "manifest.json").read_text())["settings"]["system"] == ""


def test_ctrl_c_keeps_every_answer_and_writes_the_report(pair, tmp_path):
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": "#### 2"}) + "\n" for i in range(40)))
    out = tmp_path / "run"
    args = ["gsm8k", "--data", data, "--base", pair["loop"], "--modes", "base", "--max-tokens", "400", "--out", out]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nudge_local.cli", "eval", *map(str, args), "--threads", "1", "--ctx", "2048"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or results.read_bytes().count(b"\n") < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.rstrip().endswith("nudge-local: cancelled."), stderr
    rows = rows_of(out)
    assert 2 <= len(rows) < 40
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == len(rows)  # the report covers what was written before Ctrl+C
    assert str(out / "report.md") in stdout
    assert cli(*args, "--resume").returncode == 0
    assert rows_of(out)[: len(rows)] == rows and len(rows_of(out)) == 40


# ---- gates (issue 28) ------------------------------------------------------------------------------
# At the base's unsure position (after " the") its row is " 2" 0.38, " 1" and " 3" 0.31 each: top-1
# 0.38, margin 0.07, entropy 1.09 nats. Everywhere else it is sure (entropy near 0). So top1 hands that
# position to the nudger above gamma 0.38, margin above 0.07, entropy below 1.09 nats.
GATE_SWEEP = ["--gate", "top1,entropy", "--gamma", "top1=0.3,0.5;entropy=0.5,1.5"]


def test_gate_sweep_end_to_end_and_resume(pair, tmp_path):
    out = tmp_path / "run"
    common = ["gsm8k", "--data", pair["data"], "--base", pair["base"], "--nudge", pair["nudger"], "--max-tokens",
              "16", "--out", out]  # fmt: skip
    r = cli(*common, "--modes", "base,nudged,paper", *GATE_SWEEP)
    assert r.returncode == 0, r.stderr
    assert "paper mode keeps the paper's gate, top1: it runs at top1's thresholds" in r.stderr
    rows = rows_of(out)
    assert len(rows) == len(GOLDS) * (1 + 4 + 2)  # base; nudged at 2 gates x 2 thresholds; paper at top1's 2
    by = {(x["mode"], x["gate"], x["gamma"], x["id"]): x for x in rows}
    for i in map(str, range(len(GOLDS))):
        assert by[("base", None, None, i)]["answer"] == "the 2."
        assert by[("nudged", "top1", 0.3, i)]["answer"] == "the 2."
        assert by[("nudged", "top1", 0.5, i)]["answer"] == "the 3."
        assert by[("nudged", "entropy", 0.5, i)]["answer"] == "the 3."  # 1.09 nats > 0.5: the nudger's word
        assert by[("nudged", "entropy", 1.5, i)]["answer"] == "the 2."
    assert {(x["mode"], x["gate"]) for x in rows} == {("base", None), ("nudged", "top1"), ("nudged", "entropy"),
                                                       ("paper", "top1")}  # fmt: skip
    lines = r.stderr.splitlines()
    assert "nudged entropy γ=0.5: 4/4, acc 50%  nudged 67%" in lines
    assert "nudged top1 γ=0.3: 4/4, acc 25%  nudged 0%" in lines
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gates"] == {"top1": [0.3, 0.5], "entropy": [0.5, 1.5]} and manifest["auto"] == []

    summary = json.loads((out / "summary.json").read_text())
    curves = {(c["mode"], c["gate"]): [(p["gamma"], round(p["nudge_ratio"], 4)) for p in c["points"]]
              for c in summary["gates"]}  # fmt: skip
    assert curves[("nudged", "top1")] == [(0.3, 0.0), (0.5, round(2 / 3, 4))]
    assert curves[("nudged", "entropy")] == [(0.5, round(2 / 3, 4)), (1.5, 0.0)]
    report = (out / "report.md").read_text()
    assert "## Gates" in report and "### top1 (" in report and "### entropy (" in report
    assert "| 0.5 | 4 | 66.7% | 50.0% [" in report  # entropy 0.5 (and top1 0.5): threshold, items, ratio, accuracy
    # compared where both nudged (at 0% either is the base alone)
    assert "At similar nudge ratios, top1 at γ 0.5 (66.7% nudged) and entropy at γ 0.5 (66.7% nudged)" in report
    assert "![](gates.png)" in report and (out / "gates.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "gamma.png").exists()  # gammas of different gates share no axis

    # resume: the same sweep writes nothing; a third gate's threshold adds its rows only
    assert cli(*common, "--modes", "base,nudged,paper", *GATE_SWEEP, "--resume").returncode == 0
    assert rows_of(out) == rows
    r = cli(*common, "--modes", "base,nudged", "--gate", "margin", "--gamma", "0.1", "--resume")
    assert r.returncode == 0, r.stderr
    added = rows_of(out)[len(rows) :]
    assert rows_of(out)[: len(rows)] == rows
    assert [(x["mode"], x["gate"], x["gamma"], x["answer"]) for x in added] == [("nudged", "margin", 0.1, "the 3.")] * 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gates"] == {"top1": [0.3, 0.5], "entropy": [0.5, 1.5], "margin": [0.1]}


def test_resume_of_a_run_written_before_gates(pair, tmp_path):
    """A run folder from before gates (rows without "gate", a manifest with "gammas") resumes as top1's:
    nothing is written again, and a new gate is added beside it."""
    out = tmp_path / "run"
    common = ["gsm8k", "--data", pair["data"], "--base", pair["base"], "--nudge", pair["nudger"], "--max-tokens",
              "16", "--modes", "base,nudged", "--out", out]  # fmt: skip
    assert cli(*common, "--gamma", "0.5").returncode == 0
    old = [{k: v for k, v in x.items() if k != "gate"} for x in rows_of(out)]
    (out / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in old))
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["gates"], manifest["auto"]
    (out / "manifest.json").write_text(json.dumps({**manifest, "version": 1, "gammas": [0.5]}))
    r = cli(*common, "--gamma", "0.5", "--resume")
    assert r.returncode == 0, r.stderr
    assert rows_of(out) == old
    summary = json.loads((out / "summary.json").read_text())
    assert [(g["mode"], g["gate"]) for g in summary["groups"]] == [("base", None), ("nudged", "top1")]
    assert cli(*common, "--gate", "entropy", "--gamma", "1.5", "--resume").returncode == 0
    assert rows_of(out)[: len(old)] == old and len(rows_of(out)) == len(old) + len(GOLDS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["gates"] == {"top1": [0.5], "entropy": [1.5]} and "gammas" not in manifest


def test_gamma_auto_calibrates_each_gate_once(pair, tmp_path):
    """--gamma auto: each gate calibrated (a progress line per measurement), run at its gamma and
    recorded in the manifest with the ratio measured; a second run reads the cache."""
    env = dict(os.environ, NUDGE_LOCAL_CACHE_DIR=str(tmp_path / "cache"))
    args = ["gsm8k", "--data", pair["data"], "--base", pair["base"], "--nudge", pair["nudger"], "--max-tokens", "16",
            "--modes", "nudged", "--gate", "top1,entropy", "--gamma", "auto", "--limit", "2"]  # fmt: skip

    def run_to(out):
        cmd = [sys.executable, "-m", "nudge_local.cli", "eval", *map(str, args), "--out", out, "--threads", "1"]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)

    r = run_to(tmp_path / "a")
    assert r.returncode == 0, r.stderr
    for gate in ("top1", "entropy"):
        assert f"gamma auto, {gate} gate: the threshold that nudges 12% of tokens" in r.stderr
        assert f"({gate} gate) nudges" in r.stderr
    assert "calibrating gamma, step 1:" in r.stderr
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    auto = {a["gate"]: a for a in manifest["auto"]}
    assert set(auto) == {"top1", "entropy"} and all(0 <= a["ratio"] <= 1 and a["target"] == 0.12 for a in auto.values())
    assert manifest["gates"] == {gate: [auto[gate]["gamma"]] for gate in ("top1", "entropy")}
    rows = rows_of(tmp_path / "a")
    assert {(x["gate"], x["gamma"]) for x in rows} == {(g, a["gamma"]) for g, a in auto.items()}
    again = run_to(tmp_path / "b")
    assert again.returncode == 0, again.stderr
    assert "calibrating gamma" not in again.stderr and again.stderr.count("; cached)") == 2, again.stderr
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["gates"] == manifest["gates"]
