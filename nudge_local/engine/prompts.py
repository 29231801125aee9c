"""Prompts: plain text for the base, the chat template for the nudger (docs/method.md#prompts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nudge_local.engine.errors import NudgeError

if TYPE_CHECKING:
    from nudge_local.engine.interface import ScoringModel

DEFAULT_BASE_FORMAT = "{system}\nQuestion: {question}\nAnswer:"


@dataclass(frozen=True)
class Prompts:
    """The rendered prompt texts: the base's plain text and the nudger's chat template (None for a
    model the mode does not use)."""

    base: str | None
    nudge: str | None


@dataclass(frozen=True)
class Turn:
    """One finished exchange of a conversation."""

    question: str
    answer: str


def check_base_format(fmt: str) -> None:
    try:
        fmt.format(system="", question="")
    except (KeyError, IndexError, ValueError) as e:
        raise NudgeError(
            f"The base prompt format {fmt!r} is invalid ({e}); use only the fields {{system}} and {{question}}."
        ) from None
    if "{question}" not in fmt:
        raise NudgeError(f"The base prompt format {fmt!r} has no {{question}} field; add one.")


def next_turn_marker(fmt: str = DEFAULT_BASE_FORMAT) -> str | None:
    """Where the base would start the next turn itself: the base format's turn text before
    {question}, trailing spaces dropped ("\nQuestion:" for the default format); None where that is
    empty or only whitespace (nothing marks a turn)."""
    head, sep, turn = fmt.partition("{system}")
    marker = (turn if sep else fmt).partition("{question}")[0].rstrip(" \t")
    return marker if marker.strip() else None


def answer_marker(fmt: str = DEFAULT_BASE_FORMAT) -> str | None:
    """Where the base would start an answer itself: the base format's turn text after {question},
    where it begins a line, spaces around it dropped ("\nAnswer:" for the default format); None
    where it is only whitespace or goes on on the question's line (" =" in "{question} =" is no
    label)."""
    head, sep, turn = fmt.partition("{system}")
    marker = (turn if sep else fmt).partition("{question}")[2].strip(" \t")
    return marker if marker.startswith("\n") and marker.strip() else None


def format_stops(fmt: str = DEFAULT_BASE_FORMAT) -> list[str]:
    """The stop strings a base format implies: each label that begins a line of its turn, the
    next-turn marker and the answer marker (["\nQuestion:", "\nAnswer:"] for the default format).
    A base goes on to write either and then answers itself."""
    return list(dict.fromkeys(m for m in (next_turn_marker(fmt), answer_marker(fmt)) if m))


def base_prompt(
    question: str, *, history: Sequence[Turn] = (), system: str = "", fmt: str = DEFAULT_BASE_FORMAT
) -> str:
    """Render the base's plain-text prompt. The part of `fmt` after `{system}` is the turn format:
    earlier turns repeat it with their answers, so the default gives
    `SYSTEM\\nQuestion: q1\\nAnswer: a1\\nQuestion: q2\\nAnswer:`."""
    check_base_format(fmt)
    head, sep, turn = fmt.partition("{system}")
    if not sep:
        head, turn = "", fmt
    text = head.format(question="") + system if sep else ""
    for t in history:
        answer = t.answer if t.answer[:1].isspace() else " " + t.answer
        text += turn.format(system=system, question=t.question) + answer
    text += turn.format(system=system, question=question)
    # Without a system prompt its line is dropped rather than left blank.
    return text if system else text.lstrip()


def chat_messages(question: str, *, history: Sequence[Turn] = (), system: str = "") -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    for t in history:
        messages += [{"role": "user", "content": t.question}, {"role": "assistant", "content": t.answer}]
    messages.append({"role": "user", "content": question})
    return messages


def render_chat_template(template: str, messages: list[dict], *, bos_token: str, eos_token: str) -> str:
    """Render a Hugging Face chat template in Jinja's sandbox with the generation prompt opened.
    Templates that refuse a system role (Gemma-2) get the system text at the head of the first
    user message instead, as their model cards advise."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    try:
        formatter = Jinja2ChatFormatter(template, eos_token=eos_token, bos_token=bos_token)
    except Exception as e:  # jinja2 syntax error
        raise NudgeError(
            f"The nudger's chat template is not valid Jinja ({e}); give another with --chat-template."
        ) from None
    try:
        # enable_thinking=False: a nudger's words must be answer words, not a reasoning trace.
        return formatter(messages=messages, enable_thinking=False).prompt
    except Exception as e:  # raise_exception() in the template, undefined names, ...
        if messages and messages[0]["role"] == "system" and len(messages) > 1:
            folded = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            return render_chat_template(template, folded + messages[2:], bos_token=bos_token, eos_token=eos_token)
        raise NudgeError(
            f"The nudger's chat template cannot be rendered ({e}); give another with --chat-template."
        ) from None


def nudger_prompt(
    nudger: ScoringModel,
    question: str,
    *,
    history: Sequence[Turn] = (),
    system: str = "",
    chat_template: str | None = None,
) -> str:
    template = chat_template or nudger.chat_template
    if not template:
        raise NudgeError(
            f"The nudger {nudger.label} has no chat template in its {nudger.kind}; "
            f"give one with --chat-template FILE."
        )
    bos = nudger.piece(nudger.bos).decode("utf-8", "replace") if nudger.bos >= 0 else ""
    eos = nudger.piece(nudger.eos).decode("utf-8", "replace") if nudger.eos >= 0 else ""
    messages = chat_messages(question, history=history, system=system)
    return render_chat_template(template, messages, bos_token=bos, eos_token=eos)


def render_prompts(
    base: ScoringModel | None,
    nudger: ScoringModel | None,
    question: str,
    *,
    history: Sequence[Turn] = (),
    system: str = "",
    base_format: str = DEFAULT_BASE_FORMAT,
    chat_template: str | None = None,
) -> Prompts:
    """Both prompts for one question of a conversation; a model given as None gets none."""
    return Prompts(
        base=base_prompt(question, history=history, system=system, fmt=base_format) if base else None,
        nudge=nudger_prompt(nudger, question, history=history, system=system, chat_template=chat_template)
        if nudger
        else None,
    )
