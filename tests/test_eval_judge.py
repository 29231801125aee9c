"""The judge of `nudge-local eval --judge` (nudge_local/evaluate/judge.py): the rule that reads a
verdict out of a reply, and the whole path against generated judge models, served by llama-server
and llama-cpp-python's OpenAI-compatible server, and loaded from their GGUF files.

A generated judge is a Markov table (synthetic.py): the next token depends only on the last one, so
its greedy reply to any chat prompt is a fixed chain of distinct tokens ending in end of text. The
built-in BPE vocabulary is extended with the pieces of `{"correct": 0}` so the chain exists.
Other tests make a judge with `write_judge_model(path, verdict)`."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from engines import llama_cpp_python_multi_server, llama_cpp_python_server, llama_server
from nudge_local.bench.synthetic import _B2U, CHATML, Table, Vocab, bpe_vocab, write_model
from nudge_local.config import load_settings
from nudge_local.engine.errors import NudgeError
from nudge_local.evaluate.judge import ChatJudge, judge_messages, open_judge, parse_verdict

QUESTION = "Which planet is known as the Red Planet?\nA. Venus\nB. Mars"
GOLD = "B"
ANSWER = "Mars looks red because of iron oxide, so the answer is B."
SILENT = " Sure, the answer is 2."  # a reply without a verdict
VERDICT_PIECES = ['{"', "correct", '":', " 0", " 1", "}"]


def judge_vocab() -> Vocab:
    """The built-in BPE vocabulary with a token for each piece of a verdict, so a reply can be a
    chain of distinct tokens."""
    v = bpe_vocab(0)
    tokens, merges = list(v.tokens), list(v.kv["tokenizer.ggml.merges"])
    for word in VERDICT_PIECES:
        units = [_B2U[b] for b in word.encode()]
        piece = units[0]
        for u in units[1:]:
            if piece + u not in tokens:
                merges.append(f"{piece} {u}")
                tokens.append(piece + u)
            piece += u
    types = list(v.kv["tokenizer.ggml.token_type"]) + [1] * (len(tokens) - len(v.tokens))
    kv = {**v.kv, "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": types}
    return Vocab(kv, name="judge")


def reply_tokens(v: Vocab, reply: str) -> list[int]:
    """`reply` as the vocabulary's tokens, longest piece first; each token once (a Markov chain)."""
    rest, ids = reply.encode(), []
    while rest:
        n = next(n for n in range(len(rest), 0, -1) if v.find(rest[:n]) is not None)
        ids.append(v.find(rest[:n]))
        rest = rest[n:]
    assert len(set(ids)) == len(ids), f"{reply!r} repeats a token; a Markov table cannot write it"
    return ids


def write_reply_model(path: Path, reply: str, *, chat_template: str | None = CHATML) -> Path:
    """A GGUF whose greedy reply to any chat prompt (ending in a token the reply does not use, as
    ChatML's "assistant\\n" does) is exactly `reply`, then end of text."""
    v = judge_vocab()
    ids = reply_tokens(v, reply)
    rows = {a: {b: 10.0} for a, b in zip(ids, [*ids[1:], v.eos], strict=True)}
    return write_model(path, v, Table(rows=rows, default={ids[0]: 10.0}), chat_template=chat_template,
                       name=Path(path).stem)  # fmt: skip


def write_judge_model(path: Path, verdict: int | None) -> Path:
    """A judge that always replies {"correct": 1} (verdict 1), {"correct": 0} (0), or a sentence
    without a verdict (None)."""
    return write_reply_model(path, SILENT if verdict is None else f'{{"correct": {verdict}}}')


@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("judges")
    return {v: write_judge_model(d / f"judge-{v}.gguf", v) for v in (1, 0, None)}


@pytest.fixture
def settings():
    return load_settings({"threads": 1})


# -- the verdict rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ('{"correct": 1}', True),
        ('{"correct": 0}', False),
        ('{"correct":1}', True),
        ('{ "correct" :\n\t0 }', False),
        ('{"correct": true}', True),
        ('{"correct": false}', False),
        ('{"Correct": True}', True),  # Python's spelling
        ('{"correct": "1"}', True),  # quoted, as the authors' template showed it
        ('{"correct": " 0 "}', False),
        ("{'correct': 0}", False),  # a Python dict
        ('```json\n{\n  "correct": 1\n}\n```', True),
        ("```\n{'reason': 'the same letter', 'correct': '0'}\n```", False),
        ('The final answers match.\n{"correct": 1}\nThat is my verdict.', True),
        ('{"reason": "it says "B", the gold letter", "correct": 1}', True),  # unescaped quotes in the reason
        ('"{\\"correct\\": 0}"', False),  # a JSON object written as a JSON string
        ('{"verdict": {"correct": 1}}', True),
        ('{"correct": 1}\n{"correct": true}', True),  # two that agree
        ("", None),
        ("The answer is correct.", None),
        ('"correct": 1', None),  # not inside an object
        ("{correct: 1}", None),  # the key unquoted: not JSON
        ('{"correct": 1', None),  # cut off before the object closes
        ('{"incorrect": 1}', None),
        ('{"correct": null}', None),
        ('{"correct": 0.5}', None),
        ('{"correct": 10}', None),
        ('{"correct": 1.0}', None),
        ('{"correct": "yes"}', None),
        ('{"correct": "[1 if correct, 0 if incorrect]"}', None),  # the placeholder echoed back
        ('{"correct": 1} or {"correct": 0}', None),  # two that disagree
        ('{"correct": 1, "correct": 0}', None),
        ('{"correct": "partly"}\n{"correct": 1}', None),  # one unreadable: ambiguous
    ],
)
def test_parse_verdict_reads_a_correct_key_in_an_object_and_nothing_else(reply, verdict):
    assert parse_verdict(reply) is verdict


def test_the_judge_sees_the_question_the_models_answer_and_the_gold_answer():
    system, user = judge_messages(QUESTION, GOLD, ANSWER)
    assert system["role"] == "system" and "JSON" in system["content"]
    assert user["role"] == "user"
    text = user["content"]
    assert QUESTION in text and ANSWER in text and f"## Gold answer\n{GOLD}\n" in text
    assert text.index(QUESTION) < text.index(ANSWER) < text.index("## Gold answer")  # the paper's order
    assert '{"correct": 1}' in text and '{"correct": 0}' in text  # the reply's two forms, spelled out
    assert parse_verdict(text) is None  # the instructions themselves are no verdict


# -- generated judges ---------------------------------------------------------------------------


def test_a_generated_judge_replies_exactly_its_verdict(judges, settings):
    for verdict, reply in ((1, '{"correct": 1}'), (0, '{"correct": 0}'), (None, SILENT)):
        with open_judge(str(judges[verdict]), settings) as judge:
            assert judge.reply(QUESTION, GOLD, ANSWER) == reply.strip()  # shown as answers are: no outer blanks


def test_a_local_judge_gives_true_false_and_none(judges, settings):
    for verdict, expected in ((1, True), (0, False), (None, None)):
        with open_judge(str(judges[verdict]), settings) as judge:
            assert judge.label == f"judge-{verdict}.gguf"
            assert judge.verdict(QUESTION, GOLD, ANSWER) is expected
            assert judge.verdict("What is 2 + 2?", "4", "5") is expected  # the next item, same model


def test_a_judge_on_llama_server_is_asked_the_question_gold_and_answer(judges, settings, tmp_path):
    server = llama_server(judges[1], tmp_path, "-v")  # verbose: the log holds each request's prompt
    try:
        with open_judge(server.url, settings) as judge:
            assert judge.model.kind == "server" and judge.label.endswith("judge-1.gguf")
            assert judge.template == CHATML  # from the server's /props
            assert judge.verdict(QUESTION, GOLD, ANSWER) is True
            prompt = judge.prompt(QUESTION, GOLD, ANSWER)
    finally:
        server.stop()
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert judge_messages(QUESTION, GOLD, ANSWER)[1]["content"] in prompt
    log = server.log.read_text(errors="replace")  # what the server was given, JSON-escaped
    assert json.dumps(prompt)[1:-1] in log
    for part in (QUESTION, f"## Gold answer\n{GOLD}\n", ANSWER):
        assert json.dumps(part)[1:-1] in log


def test_a_judge_behind_openai_is_asked_through_its_chat_api_or_completions_with_a_given_template(
    judges, settings, tmp_path
):
    """An OpenAI-compatible server (not llama-server) is asked through /v1/chat/completions, applying
    its own template (the GGUF's, here); given a chat template, through /v1/completions instead."""
    server = llama_cpp_python_server(judges[0], tmp_path, "--api_key", "s3cret")
    try:
        with pytest.raises(NudgeError) as e:
            open_judge(server.url, settings)  # no key
        assert "HTTP 401" in one_sentence(e) and "$NUDGE_LOCAL_JUDGE_API_KEY" in str(e.value)
        os.environ["NUDGE_LOCAL_JUDGE_API_KEY"] = "s3cret"
        with open_judge(server.url + "/v1", settings) as judge:
            assert isinstance(judge, ChatJudge) and judge.label == str(judges[0])  # the server's model id
            assert judge.reply(QUESTION, GOLD, ANSWER) == '{"correct": 0}'
            assert judge.verdict(QUESTION, GOLD, ANSWER) is False
        with open_judge(server.url, settings, chat_template=CHATML) as judge:
            assert not judge.model.has_token_ids
            assert judge.reply(QUESTION, GOLD, ANSWER) == '{"correct": 0}'
    finally:
        os.environ.pop("NUDGE_LOCAL_JUDGE_API_KEY", None)
        server.stop()
    log = server.log.read_text(errors="replace")
    assert "POST /v1/chat/completions" in log and "POST /v1/completions" in log


def test_a_judge_server_with_several_models_takes_judge_model(judges, settings, tmp_path):
    server = llama_cpp_python_multi_server({"yes": judges[1], "no": judges[0]}, tmp_path)
    try:
        with pytest.raises(NudgeError) as e:
            open_judge(server.url, settings)
        assert one_sentence(e) == (
            f"The --judge server at {server.url} serves 2 models (yes, no); name one with --judge-model."
        )
        with pytest.raises(NudgeError) as e:
            open_judge(server.url, settings, model_name="maybe")
        assert "serves yes, no, not maybe; give --judge-model one of them" in one_sentence(e)
        for name, expected in (("no", False), ("yes", True)):
            with open_judge(server.url, settings, model_name=name) as judge:
                assert judge.label == name and judge.verdict(QUESTION, GOLD, ANSWER) is expected
    finally:
        server.stop()


def test_a_given_chat_template_wins_over_the_ggufs(judges, settings):
    template = "JUDGE " + CHATML
    with open_judge(str(judges[1]), settings, chat_template=template) as judge:
        assert judge.prompt(QUESTION, GOLD, ANSWER).startswith("JUDGE <|im_start|>system\n")
        assert judge.verdict(QUESTION, GOLD, ANSWER) is True


# -- failures -----------------------------------------------------------------------------------


def one_sentence(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "--judge" in text, text
    return text


def test_a_missing_judge_file_is_one_sentence_naming_judge(tmp_path, settings):
    with pytest.raises(NudgeError) as e:
        open_judge(str(tmp_path / "nowhere.gguf"), settings)
    assert one_sentence(e) == f"The --judge file {tmp_path / 'nowhere.gguf'} does not exist; check the path."


def test_an_unreachable_judge_server_is_one_sentence_naming_judge(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    with pytest.raises(NudgeError) as e:
        open_judge(f"http://127.0.0.1:{port}", settings)
    assert one_sentence(e).startswith(f"The --judge server at http://127.0.0.1:{port} cannot be reached")


def test_a_judge_without_a_chat_template_or_with_a_broken_one_is_one_sentence(tmp_path, settings):
    bare = write_reply_model(tmp_path / "bare.gguf", '{"correct": 1}', chat_template=None)
    with pytest.raises(NudgeError) as e:
        open_judge(str(bare), settings)
    assert "has no chat template in its GGUF" in one_sentence(e)
    with pytest.raises(NudgeError) as e:
        open_judge(str(bare), settings, chat_template="{% for m in messages %}")
    assert "The --judge model's chat template is not valid Jinja" in one_sentence(e)
