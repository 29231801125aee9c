"""Scoring an answer against its item's gold: numbers the way the paper's authors scored them, and a
stated rule for the letter a free-text answer chose.

Numeric tasks (gsm8k, svamp, multiarith), the authors' rule: every number in a text is a match of
`\\d+(?:,\\d{3})*(?:\\.\\d*)?`, with its commas and a trailing "." removed and a whole number written as an
integer; an answer is correct when its last number equals the gold's last number (GSM8K's gold ends
"#### N"), compared as floating-point values as their code compares them; an answer without a number is
wrong. A minus sign is not part of the pattern, so "-5" reads as 5: kept so, to score as the paper did.

Multiple choice, the letter an answer chose, found by the first of these steps that finds one:
1. a statement: the last "answer is B", "answer: (B)", "correct option is B", "choice would be **B**"
   ("answer", "option" or "choice", then "is", "would be", "should be" or ":") naming an option letter;
2. a reply that is nothing but a letter: "B", "(B)", "B.", "**B**" (bracketed, bold or boxed alike);
3. a marked letter: the last "(B)" anywhere, or "B)" / "B." opening a line; an answer that restates the
   option list (every letter marked, in order) has that run skipped, so the list is not a choice;
4. an option's text: the option whose full text (whole words, any case) the answer mentions last,
   skipping a restated list the same way and a mention inside a longer option's; none when two options
   end at the same place.
Letters count in capitals only and only where marked or stated, so the article in "A train leaves..."
is no choice. No step finding a letter: None, scored wrong.

An answer a budget cut short (the length limit, or paper mode's round limit) is scored by the same
rule, as the authors scored it, though its last number may be a step's rather than its result's: `cut`
flags it, so that the report counts such answers and gives the accuracy of the answers that ended by
themselves beside the paper's figure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nudge_local.evaluate.numbers import numbers

if TYPE_CHECKING:
    from nudge_local.evaluate.data import Item, Task

CUT_REASONS = ("length", "round")  # stop reasons of an answer a budget ended, not the answer itself


def cut(stop_reason: str | None) -> bool:
    """Whether an answer that stopped for `stop_reason` was cut short by the length limit (max_tokens,
    a full context) or paper mode's round limit, rather than ending by itself."""
    return stop_reason in CUT_REASONS


def numeric_correct(answer: str, gold: str) -> bool:
    """The answer's last number equals the gold's last number (as floats, as the authors compare the
    numbers they convert); an answer or gold without a number is wrong."""
    got, want = numbers(answer), numbers(gold)
    return bool(got and want) and float(got[-1]) == float(want[-1])


Options = Sequence[tuple[str, str]]

# a letter may be bracketed, bold or boxed: (B), [B], **B**, **(B)**, $\boxed{B}$
_OPEN = r"[*_$]*\s*(?:\\boxed\{|[(\[])?\s*[*_]*"
_CLOSE = r"[*_]*\s*[)\]}]?[*_$]*"
_STATED = (
    r"\b(?:answer|option|choice)\b[*_]*\s*"
    r"(?:(?:is|would\s+be|will\s+be|should\s+be|must\s+be)\b\s*:?|:)\s*"  # "is", "would be", ":"
    r"(?:(?:option|choice|letter)\s+)?"  # "the answer is option B"
)


def _alternation(options: Options) -> str:
    return "|".join(re.escape(label) for label, _ in sorted(options, key=lambda o: -len(o[0])))


def _stated(answer: str, letters: str) -> str | None:
    found = list(re.finditer(rf"(?i:{_STATED}){_OPEN}({letters}){_CLOSE}(?!\w)", answer))
    return found[-1].group(1) if found else None


def _lone(answer: str, letters: str) -> str | None:
    m = re.fullmatch(rf"\s*{_OPEN}({letters}){_CLOSE}\.?\s*", answer)
    return m.group(1) if m else None


def _without_restated_list(found: list[tuple[int, int, str]], order: list[str]) -> list[tuple[int, int, str]]:
    """Drops each run of mentions that names every option in the options' order (a restated list)."""
    kept, i = [], 0
    while i < len(found):
        run = [f[2] for f in found[i : i + len(order)]]
        if len(order) > 1 and run == order:
            i += len(order)
        else:
            kept.append(found[i])
            i += 1
    return kept


def _marked(answer: str, letters: str, order: list[str]) -> str | None:
    pattern = rf"\(({letters})\)|^[ \t>*_-]*[*_]*({letters})[*_]*[.)](?!\w)"
    found = [(m.start(), m.end(), m.group(1) or m.group(2)) for m in re.finditer(pattern, answer, re.MULTILINE)]
    found = _without_restated_list(found, order)
    return found[-1][2] if found else None


def _by_text(answer: str, options: Options) -> str | None:
    found = []
    for label, text in options:
        words = r"\s+".join(re.escape(w) for w in text.split())
        if words:
            found += [(m.start(), m.end(), label) for m in re.finditer(rf"(?<!\w){words}(?!\w)", answer, re.IGNORECASE)]
    # a mention inside a longer option's mention ("York" in "New York") is not a mention of its own
    found = [f for f in found if not any(g[0] <= f[0] and f[1] <= g[1] and g[1] - g[0] > f[1] - f[0] for g in found)]
    found = _without_restated_list(sorted(found), [label for label, _ in options])
    if not found:
        return None
    last = max(f[1] for f in found)
    ends = {f[2] for f in found if f[1] == last}
    return ends.pop() if len(ends) == 1 else None


def chosen_letter(answer: str, options: Options) -> str | None:
    """The option letter `answer` chose, by the rule in this module's docstring; None when it finds none."""
    if not options:
        return None
    letters = _alternation(options)
    order = [label for label, _ in options]
    return (
        _stated(answer, letters)
        or _lone(answer, letters)
        or _marked(answer, letters, order)
        or _by_text(answer, options)
    )


def score(task: Task, item: Item, answer: str) -> bool | None:
    """Whether `answer` is right: numeric by the authors' rule, choice by `chosen_letter`; None for open."""
    if task.kind == "numeric":
        return item.gold is not None and numeric_correct(answer, item.gold)
    if task.kind == "choice":
        return item.gold is not None and chosen_letter(answer, item.options) == item.gold
    return None
