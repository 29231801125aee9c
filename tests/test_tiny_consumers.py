"""Every consumer of the engine on the tiny real pair (Gemma 3 270M base nudged by
SmolLM2-135M-Instruct, text space), end to end: the chat driven by Pilot, `serve` with the `openai`
client, and `eval` writing its report. (`run` is in test_tiny_catalog.py, `bench` in test_bench.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from nudge_local.catalog import load_catalog
from nudge_local.config import load_settings
from nudge_local.tui.app import NudgeApp
from nudge_local.tui.history import History
from nudge_local.tui.widgets.answer import AnswerView
from serving import Served
from test_tui import until

QUESTION = "How do I boil an egg?"


def test_the_chat_answers_on_the_tiny_pair_with_provenance(tmp_path):
    async def go():
        settings = load_settings({"pair": "tiny", "threads": 2, "max_tokens": 24})
        app = NudgeApp(settings, history=History(tmp_path / "history.sqlite3"), export_dir=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.ready, timeout=120)  # real weights on a busy machine: roomy waits
            await pilot.press(*QUESTION, "enter")
            await until(pilot, lambda: app.current is None and app.query(AnswerView), timeout=300)
            return list(app.query("#chat AnswerView").results(AnswerView))[-1].tokens, settings

    tokens, settings = asyncio.run(go())
    sources = {t.source for t in tokens}
    assert sources == {"base", "nudge"}, sources  # both models wrote: the base, and nudged words
    text = "".join(t.text for t in tokens)
    assert text and text == text.strip() and "\ufffd" not in text
    assert settings.gamma == load_catalog().pair("tiny").gamma  # the pair's own defaults apply


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`serve` with no pair named, no hub: it chooses the tiny pair itself."""
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path_factory.mktemp("empty-hub")), HF_HUB_OFFLINE="1")
    s = Served(None, None, "--max-tokens", "24", env=env)
    yield s
    s.stop()


def test_serve_chooses_the_tiny_pair_and_answers_any_model_name(served):
    assert served.model_id == "tiny"
    client = served.openai()
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}])
    assert r.model == "tiny"
    text = r.choices[0].message.content
    assert text and text == text.strip() and "\ufffd" not in text
    nudge = r.choices[0].model_extra["nudge"]
    assert 0 < nudge["stats"]["nudge_tokens"] < nudge["stats"]["tokens"]  # some words nudged, not all
    chunks = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # the stream is the whole answer, greedy


def test_eval_on_the_tiny_pair_writes_its_report(tmp_path):
    data = tmp_path / "gsm.jsonl"
    items = [("Tom has 3 apples and buys 5 more. How many apples does he have?", "#### 8"),
             ("A box holds 4 pens. How many pens are in 2 boxes?", "#### 8")]  # fmt: skip
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in items))
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "nudge_local.cli", "eval", "gsm8k", "--data", str(data), "--pair", "tiny",
            "--modes", "base,nudged", "--max-tokens", "32", "--threads", "2", "--out", str(out)]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(x["mode"] for x in results) == ["base", "base", "nudged", "nudged"]
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert "gemma-3-270m" in json.dumps(manifest) and "SmolLM2-135M" in json.dumps(manifest)
    assert (out / "report.md").is_file() and summary
