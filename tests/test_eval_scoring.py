"""Scoring: the authors' numeric rule on its hard cases, and the rule for the letter a free-text answer chose."""

from __future__ import annotations

import pytest

from nudge_local.evaluate.data import TASKS, Item
from nudge_local.evaluate.scoring import chosen_letter, cut, numbers, numeric_correct, score


@pytest.mark.parametrize(
    "text,expected",
    [
        ("She pays 1,234 dollars.", ["1234"]),  # thousands separator, and the sentence's period
        ("$1,200.50.", ["1200.5"]),
        ("3.0 is 3, and 3.50 is 3.5", ["3", "3", "3.5", "3.5"]),
        ("It is 7.", ["7"]),  # a trailing period is no decimal point
        ("12,345,678 grains", ["12345678"]),
        ("1,23 is not grouped", ["1", "23"]),  # a comma not followed by three digits ends the number
        ("0.25 of 007", ["0.25", "7"]),
        ("The loss is -5 degrees", ["5"]),  # minus signs are not part of the pattern, as in the paper
        ("2 + 3 = 5, then 5 * 4 = 20", ["2", "3", "5", "5", "4", "20"]),
        ("no numbers here", []),
        ("", []),
        ("12345678901234567891", ["12345678901234567891"]),  # exact digits, not a float's
    ],
)
def test_numbers(text, expected):
    assert numbers(text) == expected


GSM8K_GOLD = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 a day.\n#### 18"


@pytest.mark.parametrize(
    "answer,gold,correct",
    [
        ("She makes 9 * 2 = $18 every day.", GSM8K_GOLD, True),
        ("The answer is 18.0", GSM8K_GOLD, True),  # "18.0" is 18
        ("So $18 a day, or 126 a week.", GSM8K_GOLD, False),  # the LAST number counts
        ("She makes eighteen dollars.", GSM8K_GOLD, False),  # no number: wrong
        ("", "7", False),
        ("Total: 1,200.50 dollars", "#### 1200.5", True),
        ("Total: 1200.50", "$1,200.50.", True),
        ("It is -5", "5", True),  # the authors' rule reads -5 as 5
        ("3.5", "3.50", True),
        ("3.05", "3.5", False),
        ("42", "no number in this gold", False),
    ],
)
def test_numeric_correct(answer, gold, correct):
    assert numeric_correct(answer, gold) is correct


OPTIONS = (("A", "Paris"), ("B", "Rome"), ("C", "Berlin"), ("D", "Madrid"))


@pytest.mark.parametrize(
    "answer,letter",
    [
        ("Rome is the capital of Italy, so the answer is (B).", "B"),
        ("The answer is B because Rome is in Italy.", "B"),
        ("Answer: C", "C"),
        ("**Answer:** (D)", "D"),
        ("The correct option is **B**.", "B"),
        ("The answer would be option C.", "C"),
        ("The final answer is $\\boxed{D}$.", "D"),
        ("I first thought the answer is A, but the answer is B.", "B"),  # the last statement counts
        ("B", "B"),
        ("(C)", "C"),
        ("D.", "D"),
        ("B) Rome, the capital of Italy.", "B"),
        ("Italy's capital is listed as (B).", "B"),
        ("Let me think.\nA. Paris is in France.\nB. Rome is in Italy.", "B"),  # the last marked line
        ("A. Paris\nB. Rome\nC. Berlin\nD. Madrid\nItaly's capital is (B) of course.", "B"),  # a restated list
        ("The capital of Italy is Rome.", "B"),
        ("Not Paris: it is Rome.", "B"),  # the last-mentioned option text
        ("ROME, of course", "B"),  # any case
    ],
)
def test_chosen_letter(answer, letter):
    assert chosen_letter(answer, OPTIONS) == letter


@pytest.mark.parametrize(
    "answer",
    [
        "A train leaves the station at noon and I think it reaches the coast.",  # the article A, the pronoun I
        "A. Paris\nB. Rome\nC. Berlin\nD. Madrid",  # the options restated, nothing chosen
        "Paris, Rome, Berlin, Madrid",  # every option text, in order: a restated list
        "The capitals are hard. Perhaps Romeo knows.",  # "Rome" inside a word is no mention
        "The answer is a tricky one.",  # the article after "answer is"
        "",
    ],
)
def test_no_letter_chosen(answer):
    assert chosen_letter(answer, OPTIONS) is None


def test_option_texts_ambiguous_and_nested():
    same = (("A", "yes"), ("B", "no"), ("C", "yes"))
    assert chosen_letter("I would say yes.", same) is None  # two options end at the same place
    nested = (("A", "New York"), ("B", "New York City"), ("C", "Boston"))
    assert chosen_letter("It is New York City.", nested) == "B"  # not also A inside it
    assert chosen_letter("Boston, not New York", nested) == "A"


def test_chosen_letter_with_five_options():
    opts = (("A", "bank"), ("B", "library"), ("C", "department store"), ("D", "mall"), ("E", "new york"))
    assert chosen_letter("A revolving door is a security measure at a bank, so the answer is A.", opts) == "A"
    assert chosen_letter("Answer: E", opts) == "E"
    assert chosen_letter("Such doors guard a department store.", opts) == "C"


def test_score_by_kind():
    numeric = Item("0", "Q", "#### 18")
    assert score(TASKS["gsm8k"], numeric, "She makes $18.") is True
    assert score(TASKS["svamp"], numeric, "She makes $17.") is False
    choice = Item("1", "Capital of Italy?", "B", OPTIONS)
    assert score(TASKS["choice"], choice, "The answer is (B).") is True
    assert score(TASKS["choice"], choice, "The answer is (A).") is False
    assert score(TASKS["choice"], choice, "I cannot tell.") is False
    assert score(TASKS["open"], Item("2", "Write a poem.", None), "Roses are red.") is None


def test_an_answer_cut_by_the_length_limit_keeps_the_authors_score_and_is_flagged():
    """Scored by its last number so far, as the paper scored it (here a step's, so wrong); `cut` says
    which stop reasons mean a budget ended the answer rather than the answer itself."""
    cut_short = "First, 3 + 5 = 8 apples in the morning.\nStep 1"
    assert score(TASKS["gsm8k"], Item("0", "Q", "#### 8"), cut_short) is False
    assert [cut(r) for r in ("length", "round")] == [True, True]
    for ended in ("eos", "stop_string", "nudging_model_stop", "repeated_nudging_words", None):
        assert cut(ended) is False, ended
