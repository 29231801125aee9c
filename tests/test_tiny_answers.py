"""What the tiny real pair's models read of an answer in text space, and what its answers show
(docs/method.md#token-space-and-text-space, #stop-strings): the base reads "Answer: 1." where the
nudger wrote the first word, never "Answer:1."; the nudger reads the answer without the base's
leading space; answers show no whitespace at either end; the base format's "\\nAnswer:" is a stop."""

from __future__ import annotations

import pytest

from conftest import run_engine
from nudge_local.config import load_settings
from nudge_local.engine.local import Model
from nudge_local.engine.views import text_read
from nudge_local.engine.words import WHITESPACE
from tiny import tiny_paths

BLANK = WHITESPACE.encode()


@pytest.mark.parametrize(
    "prompt,answer,shown,read",
    [
        (b"Answer:", b"1. Boil", False, b"Answer: 1. Boil"),  # a nudger's first word gets the space
        (b"Answer:", b" Boil", False, b"Answer: Boil"),  # the base's own space is not doubled
        (b"Answer:", b"\n\n1.", False, b"Answer:\n\n1."),
        (b"Answer: ", b"Boil", False, b"Answer: Boil"),  # a format ending in a space has it already
        (b"Answer:", b"", False, b"Answer:"),
        (b"assistant\n", b" 2 ", True, b"assistant\n2 "),  # the nudger: the answer as shown
        (b"assistant\n", b" \n", True, b"assistant\n"),
        (b"Assistant:", b" 2", True, b"Assistant: 2"),  # a chat prompt ending non-blank: one space
        (b"", b"Boil", False, b"Boil"),
    ],
)
def test_text_read_joins_prompt_and_answer_as_the_model_would_write_them(prompt, answer, shown, read):
    assert text_read(prompt, answer, shown=shown) == read


@pytest.fixture(scope="module")
def tiny():
    base_path, nudger_path = tiny_paths()
    base = Model(base_path, role="base", n_ctx=1024, n_threads=2)
    nudger = Model(nudger_path, role="nudger", n_ctx=1024, n_threads=2)
    yield base, nudger
    base.close()
    nudger.close()


def spy_reads(model: Model) -> list[bytes]:
    """The text of every token list the model is asked for logits of, recorded as it runs."""
    reads: list[bytes] = []
    logits = model.logits

    def recording(tokens, *args, **kw):
        reads.append(b"".join(model.piece(t) for t in tokens))
        return logits(tokens, *args, **kw)

    model.logits = recording
    return reads


def answers_read(model: Model, prompt: str, reads: list[bytes]) -> list[bytes]:
    """What follows the prompt in each read (a read is the prompt's tokens' text and then the answer)."""
    head = b"".join(model.piece(t) for t in model.tokenize(prompt))
    assert all(r.startswith(head) for r in reads)
    return [r[len(head) :] for r in reads]


def test_the_base_reads_a_space_after_answer_where_the_nudger_wrote_the_first_word(tiny):
    base, nudger = tiny
    reads = spy_reads(base)
    try:
        prompts, events, done = run_engine(base, nudger, "How do I boil an egg?", gamma=0.4, max_tokens=12)
    finally:
        del base.logits
    assert prompts.base.endswith("Answer:") and events[0].source == "nudge"  # the nudger's word comes first
    first = nudger.piece(events[0].token)
    assert first[:1] not in BLANK  # written with no space of its own
    answers = answers_read(base, prompts.base, reads)
    assert b" " + first in [a[: len(first) + 1] for a in answers]  # read as "Answer: Boil", its own tokens
    assert all(a[:1] in (b"", b" ") for a in answers), answers  # never "Answer:Boil"


def test_the_nudger_reads_the_answer_without_the_base_leading_space(tiny):
    base, nudger = tiny
    reads = spy_reads(nudger)
    try:
        prompts, events, done = run_engine(base, nudger, "What is 2 + 2?", gamma=0.4, max_tokens=8)
    finally:
        del nudger.logits
    assert events[0].source == "base" and base.piece(events[0].token)[:1] == b" "  # the base's " 2"
    answers = answers_read(nudger, prompts.nudge, reads)
    assert any(answers) and all(a[:1] not in BLANK for a in answers if a), answers
    assert answers[0].startswith(done.text[:1].encode())


def pieces_text(model_of, events) -> str:
    """The answer as the models wrote it: every event's token's bytes, before the stream's cuts."""
    return b"".join(model_of[e.source].piece(e.token) for e in events).decode()


def test_an_answer_shows_no_whitespace_at_either_end(tiny):
    base, nudger = tiny
    # The base writes a numbered list after a blank line; "2." stops it after the newline that ends item 1
    # (its exact words differ between CPUs' kernels; the list's shape does not).
    stops = [*load_settings().stop_strings, "2."]
    _, events, done = run_engine(base, nudger, "Give me three tips for sleeping better.", mode="base",
                                 max_tokens=32, stop_strings=stops)  # fmt: skip
    written = pieces_text({"base": base}, events)
    assert written[:1].isspace() and written[-1:].isspace()  # the base wrote both: "\n\n1. ...\n"
    assert done.stop_reason == "stop_string"
    assert done.text == written.strip() == "".join(e.text for e in events)
    assert done.stats.tokens == len(events)


def test_the_base_alone_stops_at_its_own_answer_label(tiny):
    base, nudger = tiny
    question = "Answer: what is 1+1?"  # the base goes on with "\nAnswer: 1+1=2" lines to the length limit
    _, _, old = run_engine(base, nudger, question, mode="base", max_tokens=32, stop_strings=["\nQuestion:"])
    assert old.text.count("\nAnswer:") >= 2 and old.stop_reason == "length"
    _, events, done = run_engine(base, nudger, question, mode="base", max_tokens=32,
                                 stop_strings=load_settings().stop_strings)  # fmt: skip
    assert done.stop_reason == "stop_string" and "Answer" not in done.text
    assert done.text and old.text.startswith(done.text)
