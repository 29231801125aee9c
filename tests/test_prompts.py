"""Prompts: the base's plain text and every real chat template in ../shared rendered for the nudger."""

from __future__ import annotations

from pathlib import Path

import pytest

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.prompts import Turn, base_prompt, chat_messages, render_chat_template
from pairs import vocab_dir


def test_base_prompt_default_and_history():
    assert base_prompt("Why?") == "Question: Why?\nAnswer:"
    assert base_prompt("Why?", system="Be brief.") == "Be brief.\nQuestion: Why?\nAnswer:"
    hist = [Turn("2+2?", " 4."), Turn("And 3+3?", "6.")]
    assert base_prompt("Why?", history=hist, system="S") == (
        "S\nQuestion: 2+2?\nAnswer: 4.\nQuestion: And 3+3?\nAnswer: 6.\nQuestion: Why?\nAnswer:"
    )
    fmt = "### Q: {question}\n### A:"
    assert base_prompt("x", history=[Turn("a", "b")], fmt=fmt) == "### Q: a\n### A: b### Q: x\n### A:"


@pytest.mark.parametrize("fmt", ["no field", "{question} {other}", "{question"])
def test_bad_base_format_is_one_sentence(fmt):
    with pytest.raises(NudgeError, match="base prompt format"):
        base_prompt("q", fmt=fmt)


def _templates():
    d = vocab_dir()
    folder = d.parent / "chat_templates" if d else Path("/nonexistent")
    return sorted(folder.glob("*.jinja"))


@pytest.mark.skipif(not _templates(), reason="../shared/chat_templates not found (found beside NUDGE_LOCAL_VOCAB_DIR)")
@pytest.mark.parametrize("path", _templates(), ids=lambda p: p.stem)
def test_real_chat_templates_render_with_history_and_system(path):
    template = path.read_text()
    messages = chat_messages(
        "What is the capital of France?", history=[Turn("Hi there", "Hello! How can I help?")], system="Be brief."
    )
    text = render_chat_template(template, messages, bos_token="<BOS>", eos_token="<EOS>")
    assert "What is the capital of France?" in text and "Be brief." in text
    assert text.index("Hi there") < text.index("Hello! How can I help?") < text.index("capital of France")
    # The generation prompt is open: the text ends where the assistant's answer begins.
    assert not text.rstrip().endswith("capital of France?")
    assert "<think>" not in text or "</think>" in text  # Qwen3: thinking switched off, not opened


def test_broken_template_is_one_sentence():
    with pytest.raises(NudgeError, match="not valid Jinja"):
        render_chat_template("{% for %}", [{"role": "user", "content": "x"}], bos_token="", eos_token="")
    with pytest.raises(NudgeError, match="cannot be rendered"):
        render_chat_template(
            "{{ raise_exception('no') }}", [{"role": "user", "content": "x"}], bos_token="", eos_token=""
        )
