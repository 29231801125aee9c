"""The `nudge-local run` contract, run as a subprocess on generated GGUF models: exit code 2 and one
sentence for every user error, the --json object, bracketed plain output, modes, stop strings,
seeded sampling and end of generation."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from nudge_local.bench.synthetic import CHATML, Table, bpe_vocab, write_model

ROOT = Path(__file__).resolve().parents[1]
V = bpe_vocab(0)


def tok(piece: str) -> int:
    t = V.find(piece.encode())
    assert t is not None, piece
    return t


THE, WORLD, COST, ANSWER, SURE, COMMA, OK, DOT, FIRST = map(
    tok, [" the", " world", " cost", " answer", " Sure", ",", " ok", ".", " First"]
)
EOS = V.eos

# Planted pair: the base is sure of " the", then torn three ways (top-1 1/3 < gamma 0.4), so the
# nudger writes the word " Sure," (" First" starts a new word and ends it); the base is sure again
# of " ok", "." and the end.
PLANTED_BASE = Table(
    rows={THE: {WORLD: 0.0, COST: 0.0, ANSWER: 0.0}, COMMA: {OK: 5.0}, OK: {DOT: 5.0}, DOT: {EOS: 5.0}},
    default={THE: 5.0},
)
PLANTED_NUDGER = Table(rows={THE: {SURE: 5.0}, SURE: {COMMA: 5.0}, COMMA: {FIRST: 5.0}}, default={OK: 5.0})
# A base writing " the. the. the." forever, top-1 ~1 everywhere.
LOOP_BASE = Table(rows={THE: {DOT: 5.0}, DOT: {THE: 5.0}}, default={THE: 5.0})
# A base that writes " the" and then most likely ends.
EOS_BASE = Table(rows={THE: {EOS: 5.0, DOT: 2.0}}, default={THE: 5.0})
# Spread distributions for sampling: the base is unsure after most tokens, fairly sure after ".".
SPREAD_BASE = Table(
    rows={DOT: {THE: 1.0, WORLD: 0.6}},
    default={THE: 0.0, WORLD: 0.3, COST: 0.6, DOT: 0.2, COMMA: 0.1},
)
SPREAD_NUDGER = Table(default={SURE: 0.0, FIRST: 0.5, OK: 0.3, COMMA: 0.2, DOT: 0.4, ANSWER: 0.1})

CHATML_Q = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
STAT_KEYS = {
    "tokens",
    "nudge_tokens",
    "nudge_ratio",
    "base_evaluated_tokens",
    "nudger_evaluated_tokens",
    "seconds",
    "tokens_per_second",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli-models")
    out = {
        "base": write_model(d / "base.gguf", V, PLANTED_BASE),
        "nudger": write_model(d / "nudger.gguf", V, PLANTED_NUDGER, chat_template=CHATML),
        "nudger_no_template": write_model(d / "nudger-bare.gguf", V, PLANTED_NUDGER, chat_template=None),
        "loop": write_model(d / "loop.gguf", V, LOOP_BASE),
        "eos": write_model(d / "eos.gguf", V, EOS_BASE),
        "spread_base": write_model(d / "spread-base.gguf", V, SPREAD_BASE),
        "spread_nudger": write_model(d / "spread-nudger.gguf", V, SPREAD_NUDGER, chat_template=CHATML),
    }
    return out


def cli(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)  # NUDGE_LOCAL_VOCAB_DIR and the rest pass through
    return subprocess.run(
        [sys.executable, "-m", "nudge_local.cli", "run", *map(str, args), "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def run_json(*args) -> dict:
    r = cli(*args, "--json")
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1, r.stdout
    return json.loads(r.stdout)


def check_shape(out: dict) -> None:
    """Invariants of every --json object."""
    tokens, spans = out["tokens"], out["spans"]
    assert out["stop_reason"] in {"eos", "length", "stop_string"}
    assert "".join(t["text"] for t in tokens) == out["text"]
    assert "".join(s["text"] for s in spans) == out["text"]
    for t in tokens:
        assert t["source"] in {"base", "nudge"}
    assert all(s["text"] for s in spans)
    assert all(a["source"] != b["source"] for a, b in zip(spans, spans[1:], strict=False))
    merged = []  # the spans again, from the tokens
    for t in tokens:
        if not t["text"]:
            continue
        if merged and merged[-1][1] == t["source"]:
            merged[-1][0] += t["text"]
        else:
            merged.append([t["text"], t["source"]])
    assert [[s["text"], s["source"]] for s in spans] == merged
    stats = out["stats"]
    assert STAT_KEYS <= stats.keys()
    assert stats["tokens"] == len(tokens)
    assert stats["nudge_tokens"] == sum(t["source"] == "nudge" for t in tokens)
    ratio = stats["nudge_tokens"] / stats["tokens"] if stats["tokens"] else 0.0
    assert stats["nudge_ratio"] == pytest.approx(ratio, abs=1e-4)
    assert stats["seconds"] >= 0
    if stats["seconds"] > 0.01:
        assert stats["tokens_per_second"] == pytest.approx(stats["tokens"] / stats["seconds"], rel=0.02, abs=0.02)


# -- bad inputs: exit code 2 and one sentence --------------------------------------------------


def _gguf_with_version(src: Path, dst: Path, version: int) -> Path:
    data = bytearray(src.read_bytes())
    data[4:8] = struct.pack("<I", version)
    dst.write_bytes(bytes(data))
    return dst


def _foo_arch(path: Path) -> Path:
    w = GGUFWriter(str(path), "foo")
    w.add_tensor("weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# case: (how to make the file from (tmp dir, models), key phrase of the sentence)
BAD_FILES = {
    "missing": (lambda d, m: d / "nowhere.gguf", "does not exist"),
    "directory": (lambda d, m: d, "is not a file"),
    "text": (lambda d, m: _write(d / "notes.gguf", b"just some text\n"), "is not a GGUF file"),
    "half": (
        lambda d, m: _write(d / "half.gguf", m["base"].read_bytes()[: m["base"].stat().st_size // 2]),
        "is truncated",
    ),
    "garbage": (
        lambda d, m: _write(d / "garbage.gguf", b"GGUF" + struct.pack("<I", 3) + bytes(range(256)) * 4),
        "corrupt or truncated",
    ),
    "version99": (lambda d, m: _gguf_with_version(m["base"], d / "v99.gguf", 99), "version 99"),
    "foo": (lambda d, m: _foo_arch(d / "foo.gguf"), "architecture 'foo'"),
}


def assert_one_sentence(r: subprocess.CompletedProcess, phrase: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), r.stderr
    assert lines[0].startswith("nudge-local: error:"), lines[0]
    assert phrase in lines[0], lines[0]
    assert r.stdout == ""


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_base_file_is_one_sentence(case, tmp_path, models):
    make, phrase = BAD_FILES[case]
    bad = make(tmp_path, models)
    r = cli("Q", "--base", bad, "--nudge", models["nudger"])
    assert_one_sentence(r, phrase)
    assert "base" in r.stderr


def test_bad_nudger_file_names_the_nudger(tmp_path, models):
    r = cli("Q", "--base", models["base"], "--nudge", tmp_path / "missing.gguf")
    assert_one_sentence(r, "does not exist")
    assert "nudger file" in r.stderr


def test_nudger_without_chat_template(tmp_path, models):
    r = cli("Q", "--base", models["base"], "--nudge", models["nudger_no_template"])
    assert_one_sentence(r, "no chat template")
    assert "--chat-template" in r.stderr

    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML, encoding="utf-8")
    out = run_json("Q", "--base", models["base"], "--nudge", models["nudger_no_template"], "--chat-template", template)
    check_shape(out)
    assert out["prompts"]["nudge"] == CHATML_Q
    assert out["text"] == "the Sure, ok."


def test_prompt_longer_than_context(models):
    prompt = "word " * 400  # 2000 characters: far more than 64 tokens
    r = cli(prompt, "--base", models["base"], "--nudge", models["nudger"], "--ctx", "64")
    assert_one_sentence(r, "shorten the prompt")


@pytest.mark.parametrize(
    "flags, phrase",
    [
        (["--gamma", "2"], "--gamma"),
        (["--top-p", "0"], "--top-p"),
        (["--max-tokens", "-1"], "--max-tokens"),
        (["--base-format", "hello"], "{question}"),
        *(([flag, "nan", "--max-tokens", "4"], flag) for flag in ("--gamma", "--temperature", "--top-p")),
    ],
)
def test_bad_option_is_one_sentence(flags, phrase, models):
    r = cli("Q", "--base", models["base"], "--nudge", models["nudger"], *flags)
    assert_one_sentence(r, phrase)


def test_negative_seed_is_one_sentence(models):
    r = cli("Q", "--base", models["base"], "--nudge", models["nudger"], "--seed", "-1", "--max-tokens", "2")
    assert_one_sentence(r, "--seed")


def test_nudged_mode_needs_a_nudger(models):
    r = cli("Q", "--base", models["base"], "--mode", "nudged")
    assert_one_sentence(r, "--nudge")


# -- the --json contract ----------------------------------------------------------------------


def test_json_contract_on_planted_pair(models):
    out = run_json("Q", "--base", models["base"], "--nudge", models["nudger"])
    check_shape(out)
    assert out["text"] == "the Sure, ok."  # the base wrote " the": an answer's leading space is not shown
    assert out["stop_reason"] == "eos"
    assert out["prompts"] == {"base": "Question: Q\nAnswer:", "nudge": CHATML_Q}
    assert [(t["text"], t["source"]) for t in out["tokens"]] == [
        ("the", "base"),
        (" Sure", "nudge"),
        (",", "nudge"),
        (" ok", "base"),
        (".", "base"),
    ]
    assert out["spans"] == [
        {"text": "the", "source": "base"},
        {"text": " Sure,", "source": "nudge"},
        {"text": " ok.", "source": "base"},
    ]
    # base_p: ~1 where the base wrote, the gate value 1/3 on every token of the nudged word.
    for t in out["tokens"]:
        expected = 1 / 3 if t["source"] == "nudge" else 1.0
        assert t["base_p"] == pytest.approx(expected, abs=1e-3)
    stats = out["stats"]
    assert (stats["tokens"], stats["nudge_tokens"]) == (5, 2)
    assert stats["nudge_ratio"] == pytest.approx(0.4)
    # Both models evaluated their prompt; speculative drafts add the rejected drafts and one token
    # again per round, and without them the prefix cache evaluates no answer token twice.
    prompt = stats["prompt_tokens"]
    extra = stats["draft_proposed"] + stats["base_forward_calls"]
    for role, key in (("base", "base_evaluated_tokens"), ("nudger", "nudger_evaluated_tokens")):
        assert prompt[role] <= stats[key] <= prompt[role] + stats["tokens"] + extra, (role, stats)
    plain = run_json("Q", "--base", models["base"], "--nudge", models["nudger"], "--no-speculative")
    assert plain["tokens"] == out["tokens"] and plain["stats"]["draft_proposed"] == 0
    for role, key in (("base", "base_evaluated_tokens"), ("nudger", "nudger_evaluated_tokens")):
        assert prompt[role] <= plain["stats"][key] <= prompt[role] + plain["stats"]["tokens"]


def test_json_system_prompt_reaches_both_models(models):
    out = run_json("Q", "--base", models["base"], "--nudge", models["nudger"], "--system", "Be kind.")
    assert out["prompts"] == {
        "base": "Be kind.\nQuestion: Q\nAnswer:",
        "nudge": "<|im_start|>system\nBe kind.<|im_end|>\n" + CHATML_Q,
    }


def test_gamma_below_the_base_doubt_lets_the_base_write_all(models):
    # 1/3 >= 0.3: the base keeps writing (ties go to one of its three options), never the nudger.
    out = run_json("Q", "--base", models["base"], "--nudge", models["nudger"], "--gamma", "0.3", "--max-tokens", "6")
    check_shape(out)
    assert out["stats"]["nudge_tokens"] == 0
    assert {t["source"] for t in out["tokens"]} == {"base"}
    assert out["stop_reason"] == "length" and len(out["tokens"]) == 6
    assert out["text"].startswith("the ")


# -- plain output -----------------------------------------------------------------------------


def test_plain_output_brackets_nudged_words(models):
    r = cli("Q", "--base", models["base"], "--nudge", models["nudger"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "the [Sure,] ok.\n"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert re.match(r"\[nudged\] stop: eos; 5 tokens, 2 nudged \(40\.0%\)", lines[0]), lines[0]


# -- single-model modes -----------------------------------------------------------------------


def test_mode_base_needs_only_the_base(models):
    out = run_json("Q", "--mode", "base", "--base", models["eos"])
    check_shape(out)
    assert out["text"] == "the" and out["stop_reason"] == "eos"
    assert [t["source"] for t in out["tokens"]] == ["base"]
    assert out["prompts"]["base"] == "Question: Q\nAnswer:"
    assert out["stats"]["nudge_tokens"] == 0 and out["stats"]["nudger_evaluated_tokens"] == 0


def test_mode_nudger_needs_only_the_nudger(models):
    out = run_json("Q", "--mode", "nudger", "--nudge", models["nudger"], "--max-tokens", "4")
    check_shape(out)
    assert out["text"] == "ok ok ok ok" and out["stop_reason"] == "length"
    assert [t["source"] for t in out["tokens"]] == ["nudge"] * 4
    assert all(t["base_p"] is None for t in out["tokens"])
    assert out["prompts"]["nudge"] == CHATML_Q
    assert out["stats"]["nudge_ratio"] == pytest.approx(1.0)
    assert out["stats"]["base_evaluated_tokens"] == 0


def test_mode_base_without_base_is_one_sentence(models):
    r = cli("Q", "--mode", "base", "--nudge", models["nudger"])
    assert_one_sentence(r, "--base")


# -- stop strings -----------------------------------------------------------------------------


@pytest.mark.parametrize("stops", [[". th"], ["e."], ["zzz", "e. the."]])
def test_stop_string_cuts_before_it(stops, models):
    args = [a for s in stops for a in ("--stop", s)]
    out = run_json("Q", "--mode", "base", "--base", models["loop"], "--max-tokens", "20", *args)
    check_shape(out)
    full = " the." * 10  # what the base writes greedily
    cut = min(full.index(s) for s in stops if s in full)
    assert out["stop_reason"] == "stop_string"
    assert out["text"] == full[:cut].lstrip()  # cut at the stop string, shown without the leading space
    assert not any(s in out["text"] for s in stops)


def test_stop_string_in_nudged_plain_output(models):
    r = cli("Q", "--base", models["base"], "--nudge", models["nudger"], "--stop", " ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "the [Sure,]\n"
    assert "stop: stop_string" in r.stderr


def test_no_stop_string_runs_to_length(models):
    out = run_json("Q", "--mode", "base", "--base", models["loop"], "--max-tokens", "6", "--stop", "zzz")
    check_shape(out)
    assert out["stop_reason"] == "length" and out["text"] == "the. the. the."


# -- sampling ---------------------------------------------------------------------------------


def test_seeded_sampling_repeats_and_varies(models):
    pair = ["--base", models["spread_base"], "--nudge", models["spread_nudger"]]
    common = ["--temperature", "1.5", "--max-tokens", "12"]

    def sample(seed):
        out = run_json("Q", *pair, *common, "--seed", seed)
        check_shape(out)
        return out

    first = sample(7)
    again = sample(7)
    assert again["tokens"] == first["tokens"]
    assert again["text"] == first["text"]
    texts = {first["text"], *(sample(s)["text"] for s in (1, 2, 3))}
    assert len(texts) >= 2, texts
    assert any(t["source"] == "nudge" for t in first["tokens"])


# -- end of generation ------------------------------------------------------------------------


def test_eos_ends_nudged_generation(models):
    out = run_json("Q", "--base", models["eos"], "--nudge", models["nudger"], "--max-tokens", "50")
    check_shape(out)
    assert out["stop_reason"] == "eos"
    assert out["text"] == "the"
    assert out["stats"]["tokens"] == 1
