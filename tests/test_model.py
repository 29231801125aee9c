"""The loaded model: tok() rule, pieces, UTF-8 tails, the KV prefix cache and its counters."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load, needs_shared
from nudge_local.bench.synthetic import CHATML, Table, write_model
from nudge_local.engine.errors import ContextFull
from nudge_local.engine.local import split_incomplete_utf8
from pairs import vocab


def _model(tmp_path, name, **kw):
    v = vocab(name)
    t = v.find(b" the")
    table = Table(rows={t: {v.find(b"."): 2.0, t: 1.0}}, default={t: 3.0, v.find(b","): 1.0})
    return load(write_model(tmp_path / f"{name}.gguf", v, table, chat_template=CHATML), **kw)


@needs_shared
@pytest.mark.parametrize(
    "name,bos",
    [("llama-bpe", "<|begin_of_text|>"), ("llama-spm", "<s>"), ("qwen2", None), ("gpt-2", None)],
)
def test_bos_added_once_only_where_asked(tmp_path, name, bos):
    with _model(tmp_path, name) as m:
        plain = m.tokenize("Hello world")
        if bos is None:
            assert not m.add_bos and m.bos not in plain[:1]
        else:
            assert plain[0] == m.bos and plain.count(m.bos) == 1
            assert m.tokenize(bos + "Hello world").count(m.bos) == 1  # never two BOS


@needs_shared
def test_special_token_text_is_parsed(tmp_path):
    with _model(tmp_path, "qwen2") as m:
        toks = m.tokenize("<|im_start|>user\nHi<|im_end|>")
        assert toks[0] == 151644 and toks[-1] == 151645 and m.is_eog(151645)
        assert m.piece(151644) == b"<|im_start|>"


@needs_shared
def test_long_pieces_are_not_truncated(tmp_path):
    """Llama.detokenize's 32-byte buffer returns b'' for these; the model layer must not."""
    v = vocab("qwen2")
    longest = max(
        range(len(v.tokens)), key=lambda i: len(v.piece(i)) if v.kv["tokenizer.ggml.token_type"][i] == 1 else 0
    )
    with _model(tmp_path, "qwen2") as m:
        assert len(v.piece(longest)) > 32
        assert m.piece(longest) == v.piece(longest)


@pytest.mark.parametrize(
    "name", ["bpe0", pytest.param("qwen2", marks=needs_shared), pytest.param("llama-spm", marks=needs_shared)]
)
def test_text_ending_inside_a_character_keeps_its_bytes(tmp_path, name):
    with _model(tmp_path, name) as m:
        toks = m.tokenize(b"caf\xc3")
        assert m.piece(toks[-1]) == b"\xc3"
        assert b"".join(m.piece(t) for t in toks).endswith(b"caf\xc3")
        assert m.tokenize(b"caf\xc3\xa9")[-1] != toks[-1]


def test_split_incomplete_utf8():
    assert split_incomplete_utf8("é".encode()) == ("é".encode(), b"")
    assert split_incomplete_utf8(b"ab\xe6\x97") == (b"ab", b"\xe6\x97")
    assert split_incomplete_utf8(b"ab\xf0\x9f\x98") == (b"ab", b"\xf0\x9f\x98")
    assert split_incomplete_utf8(b"ab\xa9") == (b"ab\xa9", b"")  # a stray continuation byte is not a tail


def test_prefix_cache_evaluates_only_what_differs(tmp_path):
    with _model(tmp_path, "bpe0") as m:
        a = m.tokenize("Hello world, the answer is")
        b = m.tokenize(" the first step")
        la = m.logits(a).copy()
        assert (m.evaluated_tokens, m.forward_calls) == (len(a), 1)
        np.testing.assert_array_equal(m.logits(a), la)  # cached: the same row, nothing evaluated
        assert m.evaluated_tokens == len(a)
        lab = m.logits(a + b).copy()
        assert m.evaluated_tokens == len(a) + len(b)
        c = m.tokenize(" so")
        lac = m.logits(a[:3] + c).copy()  # diverges after 3 tokens: cut back, evaluate only c
        assert m.evaluated_tokens == len(a) + len(b) + len(c)
        assert m.held_tokens == a[:3] + c
        before = m.evaluated_tokens
        np.testing.assert_array_equal(m.logits(a[:3]), _fresh(m, a[:3]))  # a strict prefix: one token again
        assert m.evaluated_tokens - before == 1 + len(a[:3])  # (+ the fresh reference run)
        for seq, got in ((a, la), (a + b, lab), (a[:3] + c, lac)):
            np.testing.assert_array_equal(got, _fresh(m, seq))


def test_time_is_counted_by_kind_of_call(tmp_path):
    """decode_seconds grows with every evaluation; read_seconds only with those made while the
    caller marked the model as reading; tokenize_seconds with every tokenization."""
    with _model(tmp_path, "bpe0") as m:
        assert (m.decode_seconds, m.read_seconds, m.tokenize_seconds) == (0, 0, 0)
        a = m.tokenize("Hello world, the answer is")
        assert m.tokenize_seconds > 0
        m.reading = True
        m.logits(a)
        assert m.read_seconds == m.decode_seconds > 0
        m.reading = False
        read, tokenized = m.read_seconds, m.tokenize_seconds
        m.logits([*a, a[-1]])
        assert m.read_seconds == read < m.decode_seconds and m.tokenize_seconds == tokenized


def _fresh(m, seq):
    m.reset()
    return m.logits(seq).copy()


def test_batched_rows_equal_single_evaluations(tmp_path):
    with _model(tmp_path, "bpe0") as m:
        seq = m.tokenize("Hello world, the the. the world")
        rows = [2, 5, len(seq) - 1]
        calls = m.forward_calls
        got = m.evaluate(seq, rows)
        assert m.forward_calls == calls + 1 and got.shape == (3, m.n_vocab)
        for r, row in zip(rows, got, strict=True):
            np.testing.assert_array_equal(row, _fresh(m, seq[: r + 1]))


def test_context_full_is_a_clear_error(tmp_path):
    with _model(tmp_path, "bpe0", n_ctx=64) as m:
        with pytest.raises(ContextFull, match="shorten the prompt"):
            m.logits(m.tokenize("word " * 200))


def test_metadata_and_template(tmp_path):
    with _model(tmp_path, "bpe0") as m:
        assert m.chat_template == CHATML
        assert m.metadata("general.architecture") == "llama"
        assert m.metadata("no.such.key") is None
        assert m.is_eog(m.eos) and not m.is_eog(m.tokenize(" the")[0])


def test_a_gguf_header_is_walked_once_per_file_version(tmp_path, monkeypatch):
    """Checking, planning the context and loading each read the header; the walk happens once,
    and again only when the file changes."""
    import nudge_local.engine.gguf_check as gc
    from nudge_local.engine.devices import model_shape

    path = write_model(tmp_path / "m.gguf", vocab("bpe0"), Table(default={5: 3.0}))
    walks = []
    real = gc.read_header
    monkeypatch.setattr(gc, "read_header", lambda *a, **kw: walks.append(a[0]) or real(*a, **kw))
    gc.check_gguf(path)
    model_shape(path)
    gc.check_gguf(path)
    assert len(walks) == 1
    write_model(path, vocab("bpe0"), Table(default={6: 3.0}), layers=2)  # a new version of the file
    assert model_shape(path)["kv_bytes_per_token"] > 0 and len(walks) == 2
