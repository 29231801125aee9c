"""URIAL, the training-free baseline (arXiv 2312.01552): the base model alone, aligned in context by a
preamble and three stylistic examples. The preamble and the examples are the project's own, written
in URIAL's form: a fenced query, a fenced answer. See docs/eval.md."""

from __future__ import annotations

PREAMBLE = """# Instructions

Below are conversations between a person and a helpful, careful AI assistant. The assistant answers \
the question that was asked, explains its reasoning step by step where there is reasoning to do, says \
plainly when it does not know, and ends with a clear final answer. It is polite, honest and brief.
"""

EXAMPLES = (
    (
        "A baker makes 24 rolls in the morning and 18 in the afternoon. She sells 35 of them. How many rolls are left?",
        "Let's work through it step by step.\n\n"
        "1. Rolls made in total: 24 + 18 = 42.\n"
        "2. Rolls left after selling 35: 42 - 35 = 7.\n\n"
        "So the baker has 7 rolls left.",
    ),
    (
        "Why do we see lightning before we hear thunder?",
        "Both come from the same discharge, but they travel at very different speeds:\n\n"
        "- Light travels at about 300,000 km per second, so it reaches us almost at once.\n"
        "- Sound travels at about 343 m per second in air, roughly a million times slower.\n\n"
        "So the flash arrives first, and the thunder follows a few seconds later. Counting the seconds "
        "between them and dividing by 3 gives the distance of the storm in kilometres.",
    ),
    (
        "Can you tell me the exact population of my town today?",
        "I can't give an exact figure for today: I don't know which town you mean, and populations "
        "change daily. The most reliable source is your national statistics office or the town's own "
        "website, which publish census figures and yearly estimates. If you tell me the town, I can "
        "share what I know about its size, with the year that figure is from.",
    ),
)

STOPS = ("\n```", "# Query:")  # the answer's closing fence, or the base starting a next query itself


def _block(question: str, answer: str | None) -> str:
    head = f"# Query:\n```\n{question}\n```\n\n# Answer:\n```\n"
    return head if answer is None else f"{head}{answer}\n```\n\n"


def urial_prompt(question: str, system: str = "") -> str:
    """The base's prompt in URIAL's form: the preamble, the three examples, then the query (the
    system prompt, where one is given, opens the query), left open for the answer."""
    query = f"{system}\n\n{question}" if system else question
    return PREAMBLE + "\n" + "".join(_block(q, a) for q, a in EXAMPLES) + _block(query, None)
