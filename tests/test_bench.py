"""The benchmark (`nudge-local bench`, nudge_local/bench.py) on small generated pairs: the planted
agreement is the one met in generation, and one run of every mode gives the table and the JSON the
closing notes quote."""

from __future__ import annotations

import json

import pytest

from nudge_local.bench import CONFIDENT, CYCLE, agreement_on_path, make_pair, run_mode
from nudge_local.cli import main
from nudge_local.model import Model
from nudge_local.prompts import render_prompts

SMALL = ((64, 2, 176), (32, 1, 88))


@pytest.mark.parametrize("agreement", [0.5, 0.7, 0.9])
def test_generated_pair_meets_the_agreement_asked(tmp_path, agreement):
    base_path, nudger_path = make_pair(tmp_path, None, agreement, shapes=SMALL)
    with Model(base_path, role="base") as base, Model(nudger_path, role="nudger") as nudger:
        prompts = render_prompts(base, nudger, "Find the total cost of the supplies, step by step.")
        args = type("Args", (), {"gamma": 0.4, "max_tokens": 4 * CYCLE})()
        run = run_mode("nudged", base, nudger, prompts, args)
        assert run["tokens"] == 4 * CYCLE  # four whole cycles: no stop, no partial cycle
        assert run["nudge_ratio"] == pytest.approx((CYCLE - CONFIDENT) / CYCLE)
        assert agreement_on_path(nudger, prompts, run["events"]) == pytest.approx(agreement)


def test_bench_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--shape", "64,2", "--agreement", "0.7", "--rounds", "2", "--max-tokens", "48",
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    for mode in ("base", "nudger", "nudged", "speculative", "paper", "paper-api"):
        assert f"\n{mode} " in printed
    assert "speculative writes token mode's text: True" in printed
    table = json.loads(out.read_text())["agreement_0.7"]
    assert table["base"]["ratio_to_base"] == pytest.approx(1.0)
    for mode in ("nudger", "nudged", "speculative", "paper", "paper-api"):
        row = table[mode]
        assert row["tokens"] > 0 and row["tokens_per_second"] > 0 and row["ratio_to_base"] > 0
        assert 0 <= row["python_share"] < 1 and row["python_ms_per_token"] >= 0
        assert len(row["ratio_to_base_rounds"]) == len(row["tokens_per_second_rounds"]) == 2
        assert min(row["ratio_to_base_rounds"]) <= row["ratio_to_base"] <= max(row["ratio_to_base_rounds"])
    assert table["speculative"]["acceptance"] is not None  # drafts were proposed and counted
    assert 0 <= table["speculative"]["acceptance"] <= 1
    assert table["nudged"]["acceptance"] is None
    assert table["agreement_on_path"] == pytest.approx(0.7)
    assert table["speculative_same_text"] and table["paper_speedup"]["same_text"]
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize(
    "argv, phrase",
    [
        (["--shape", "wide"], "argument --shape: WIDTH,LAYERS"),
        (["--vocab", "missing.gguf"], "missing.gguf is not a file"),
        (["--vocab", __file__], "is not a GGUF file with a tokenizer"),
        (["--agreement", "0.7,1.5"], "shares from 0 to 1 expected"),
        (["--modes", "base,fast"], "modes are some of"),
        (["--rounds", "0"], "at least 1 expected"),
        (["--json", "no/such/folder/out.json"], "The folder for --json"),
    ],
)
def test_bench_options_are_checked_in_one_sentence(capsys, argv, phrase):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nudge-local: error:") and phrase in err
    assert "\n" not in err


def test_bench_on_given_files(tmp_path, capsys):
    base_path, nudger_path = make_pair(tmp_path, None, 0.9, shapes=SMALL)
    out = tmp_path / "real.json"
    rc = main(["bench", "--base", str(base_path), "--nudge", str(nudger_path), "--modes", "base,speculative",
               "--rounds", "1", "--max-tokens", "24", "--json", str(out)])  # fmt: skip
    assert rc == 0
    assert f"== {base_path} + {nudger_path}" in capsys.readouterr().out
    table = json.loads(out.read_text())["real"]
    assert set(table) == {"base", "speculative"} and table["speculative"]["tokens"] == 24


def test_bench_refuses_half_a_pair(tmp_path, capsys):
    base_path, _ = make_pair(tmp_path, None, 0.9, shapes=SMALL)
    assert main(["bench", "--base", str(base_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "nudge-local: error: A real pair needs both --base and --nudge (or --pair ALIAS)."
    )
