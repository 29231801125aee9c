"""The loom's engine side (nudge_local/engine/loom.py): an answer branched at a token goes on from
there with the conversation's settings, its first tokens kept as written, the models' caches reused up
to the branch point. On a generated pair (token space) and on the tiny pair (text space)."""

from __future__ import annotations

import pytest

from conftest import load
from nudge_local.bench.generated import make_pair
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Done
from nudge_local.engine.generate import generate
from nudge_local.engine.local import Model
from nudge_local.engine.loom import Branch, branch_point
from nudge_local.engine.prompts import render_prompts
from nudge_local.render import bracketed
from tiny import tiny_paths

SHAPES = ((64, 2, 128), (32, 1, 64))
QUESTION = "Find the total cost of the supplies, step by step."


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base_path, nudger_path = make_pair(tmp_path_factory.mktemp("loom"), None, 0.7, shapes=SHAPES)
    base, nudger = load(base_path, "base", 1024), load(nudger_path, "nudger", 1024)
    yield base, nudger
    base.close()
    nudger.close()


@pytest.fixture(scope="module")
def tiny():
    base_path, nudger_path = tiny_paths()
    base = Model(base_path, role="base", n_ctx=1024, n_threads=2)
    nudger = Model(nudger_path, role="nudger", n_ctx=1024, n_threads=2)
    yield base, nudger
    base.close()
    nudger.close()


def answer(prompts, base, nudger, **kw):
    *events, done = generate(prompts, base=base, nudger=nudger, **kw)
    assert isinstance(done, Done)
    return events, done


def evaluated(base, nudger, run):
    before = base.evaluated_tokens + nudger.evaluated_tokens
    out = run()
    return out, base.evaluated_tokens + nudger.evaluated_tokens - before


def test_a_base_token_branched_to_itself_writes_the_answer_again(pair):
    """Exactness: handing a base-written position to the base (or choosing its own token there as
    the user's) keeps every decision, so the answer is the original, token for token, and its
    sources too but for the chosen token's."""
    base, nudger = pair
    prompts = render_prompts(base, nudger, QUESTION)
    events, done = answer(prompts, base, nudger, gamma=0.4, max_tokens=40, speculative=False)
    i = next(k for k, e in enumerate(events) if e.source == "base" and k > 3)
    kept, kept_pieces = branch_point(events, i, base, nudger)
    same = Branch(kept, kept_pieces, writer="base")
    again, redone = answer(prompts, base, nudger, gamma=0.4, max_tokens=40, branch=same)
    assert [(e.source, e.token, e.text) for e in again] == [(e.source, e.token, e.text) for e in events]
    assert redone.text == done.text
    chosen = Branch(kept, kept_pieces, token=events[i].token, piece=base.piece(events[i].token))
    mine, _ = answer(prompts, base, nudger, gamma=0.4, max_tokens=40, branch=chosen)
    assert [e.token for e in mine] == [e.token for e in events] and mine[i].source == "user"
    assert [e.source for e in mine[:i]] == [e.source for e in events[:i]]


def test_a_branch_takes_another_token_and_reads_only_what_is_new(pair):
    base, nudger = pair
    prompts = render_prompts(base, nudger, QUESTION)
    (events, _), first = evaluated(base, nudger, lambda: answer(prompts, base, nudger, gamma=0.4, max_tokens=40))
    i = len(events) // 2
    other = next(t for t in range(10, base.n_vocab) if t != events[i].token and base.piece(t).strip())
    kept, kept_pieces = branch_point(events, i, base, nudger)
    branch = Branch(kept, kept_pieces, token=other, piece=base.piece(other))
    (branched, done), cost = evaluated(
        base, nudger, lambda: answer(prompts, base, nudger, gamma=0.4, max_tokens=40, branch=branch)
    )
    assert [(e.source, e.token) for e in branched[:i]] == [(e.source, e.token) for e in events[:i]]
    assert branched[i].source == "user" and branched[i].token == other and branched[i].base_p is None
    assert done.stats.kept == i and done.stats.tokens == len(branched)  # tok/s counts only what was written
    assert done.text.startswith("".join(e.text for e in events[:i]).strip())
    assert "{" + base.piece(other).decode().strip() + "}" in bracketed(branched)
    written = len(branched) - i
    # The prompt and the kept tokens are not read again: each model evaluates at most what follows
    # the branch point (and the one token the gate re-asks), far less than the first answer did.
    assert cost <= 2 * (written + 2) and cost < first - done.stats.prompt_tokens["base"]


def test_the_nudger_handed_a_position_writes_a_word_there(pair):
    base, nudger = pair
    prompts = render_prompts(base, nudger, QUESTION)
    events, _ = answer(prompts, base, nudger, gamma=0.4, max_tokens=40, speculative=False)
    i = next(k for k, e in enumerate(events) if e.source == "base" and k > 2 and events[k - 1].source == "base")
    kept, kept_pieces = branch_point(events, i, base, nudger)
    handed = Branch(kept, kept_pieces, writer="nudger")
    branched, _ = answer(prompts, base, nudger, gamma=0.4, max_tokens=40, branch=handed)
    assert branched[i].source == "nudge" and branched[i].base_p is None  # handed over, not gated


def test_the_tiny_pair_branches_in_text_space_from_the_nudgers_alternative(tiny):
    """Different vocabularies: the kept text is read by each model as its own tokens, and a branch
    costs only the new text, not the question again."""
    base, nudger = tiny
    prompts = render_prompts(base, nudger, "How do I boil an egg?")
    (events, done), first = evaluated(base, nudger, lambda: answer(prompts, base, nudger, gamma=0.4, max_tokens=24))
    i = 6
    kept, kept_pieces = branch_point(events, i, base, nudger)
    word = nudger.tokenize(" carefully")[-1]
    branch = Branch(kept, kept_pieces, token=word, piece=nudger.piece(word))
    (branched, again), cost = evaluated(
        base, nudger, lambda: answer(prompts, base, nudger, gamma=0.4, max_tokens=24, branch=branch)
    )
    shown = "".join(e.text for e in events[:i]).strip()
    assert again.text.startswith(shown) and "carefully" in again.text
    assert [e.text for e in branched[:i]] == [e.text for e in events[:i]] and branched[i].source == "user"
    assert cost < first and cost < done.stats.prompt_tokens["base"] + done.stats.prompt_tokens["nudger"]


def test_a_branch_is_refused_where_it_cannot_be_taken(pair):
    base, nudger = pair
    prompts = render_prompts(base, nudger, QUESTION)
    events, _ = answer(prompts, base, nudger, gamma=0.4, max_tokens=12)
    kept, kept_pieces = branch_point(events, 3, base, nudger)
    with pytest.raises(NudgeError, match="either a token the user chose or a model"):
        Branch(kept, kept_pieces)
    with pytest.raises(NudgeError, match="no position 99"):
        branch_point(events, 99, base, nudger)
    with pytest.raises(NudgeError, match="Paper mode"):
        answer(prompts, base, nudger, mode="paper", branch=Branch(kept, kept_pieces, writer="base"))
    with pytest.raises(NudgeError, match="A base-only answer takes only a token you choose"):
        list(generate(prompts, mode="base", base=base, branch=Branch(kept, kept_pieces, writer="nudger")))
