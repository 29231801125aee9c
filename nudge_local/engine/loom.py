"""The loom: an answer taken another way at one of its tokens (docs/method.md#the-loom).

A `Branch` keeps an answer's first tokens as they were written and says what happens at the next
position: a token the user chose (one of either model's alternatives there, provenance "user"), or
the position handed to a model (the nudger writes one word there, or the base one token, whatever
the gate says). The mode then goes on with the conversation's settings. The kept tokens are replayed
into the shared answer without asking any model, so the models' KV caches, which still hold the
conversation and the answer, are kept up to the branch point: only what follows it is evaluated.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import Result, Role, TokenEvent
from nudge_local.engine.gates import GateName
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.sampling import Chooser, prob, top1
from nudge_local.engine.stream import Steps
from nudge_local.engine.token_mode import nudged_steps, nudged_word, single_steps
from nudge_local.engine.views import Answer, View


@dataclass(frozen=True)
class Branch:
    """Where an answer goes another way: its first tokens kept (`kept`, each with its bytes in
    `pieces`), then at the next position either the user's token (`token`, whose bytes are `piece`;
    an id of the model it was chosen from, shared by both in token space) or a model handed the
    position (`writer`)."""

    kept: tuple[TokenEvent, ...]
    pieces: tuple[bytes, ...]
    token: int | None = None
    piece: bytes = b""
    writer: Role | None = None

    def __post_init__(self) -> None:
        if len(self.kept) != len(self.pieces):
            raise NudgeError("A branch needs the bytes of every token it keeps.")
        if (self.token is None) == (self.writer is None):
            raise NudgeError("A branch takes either a token the user chose or a model to write; give one.")
        if self.token is not None and not self.piece:
            raise NudgeError("The token chosen for a branch has no text.")


def written_piece(event: TokenEvent, base: ScoringModel | None, nudger: ScoringModel | None) -> bytes:
    """The bytes a token of an answer added: its writer's piece, or the text of a token the user chose
    (its id may be either model's, in text space)."""
    if event.source == "user":
        return event.text.encode("utf-8")
    writer = base if event.source == "base" else nudger
    if writer is None:
        raise NudgeError(f"The answer holds a {event.source} token, but that model is not loaded.")
    return writer.piece(event.token)


def branch_point(
    tokens: Sequence[TokenEvent], index: int, base: ScoringModel | None, nudger: ScoringModel | None
) -> tuple[tuple[TokenEvent, ...], tuple[bytes, ...]]:
    """The tokens before `index` and their bytes: what a branch there keeps."""
    if not 0 <= index <= len(tokens):
        raise NudgeError(f"An answer of {len(tokens)} tokens has no position {index} to branch at.")
    kept = tuple(tokens[:index])
    return kept, tuple(written_piece(t, base, nudger) for t in kept)


def _replay(answer: Answer, branch: Branch) -> Generator[tuple[TokenEvent, bytes], None, None]:
    """The kept tokens, into the shared answer and on to the stream, as they were written."""
    for event, piece in zip(branch.kept, branch.pieces, strict=True):
        answer.add(event.token, piece)
        yield replace(event, text=""), piece


def _base_token(
    base: ScoringModel, view: View, answer: Answer, choose: Chooser
) -> Generator[tuple[TokenEvent, bytes], None, bool]:
    """The base writes the position handed to it, whatever its top-1 probability; False at its end
    of text."""
    base.reading = True
    logits = view.logits()
    best, base_p = top1(logits)
    t = choose(logits, best)
    if base.is_eog(t):
        return False
    piece = base.piece(t)
    answer.add(t, piece)
    h = choose.entropy(logits)
    yield TokenEvent("", "base", t, base_p, base_p if t == best else prob(logits, t), choose.top(logits), h, h), piece
    return True


def branch_steps(
    models: dict[Role, ScoringModel],
    views: dict[Role, View],
    answer: Answer,
    branch: Branch,
    *,
    mode: str,
    gamma: float,
    max_tokens: int,
    word_cap: int,
    choose: Chooser,
    gate: GateName = "top1",
) -> Steps:
    """The kept tokens, the branch's own position, then `mode` (nudged, base or nudger) onwards."""
    yield from _replay(answer, branch)
    used = len(branch.kept)
    if used >= max_tokens:
        return Result("length")
    if branch.token is not None:
        answer.add(branch.token, branch.piece)
        yield TokenEvent("", "user", branch.token, None, 1.0), branch.piece
        used += 1
    elif branch.writer not in models:
        raise NudgeError(f"A {mode}-only answer takes only a token you choose at a branch: the {branch.writer} "
                         f"has no view of it.")  # fmt: skip
    elif branch.writer == "nudger":
        cap = min(word_cap, max_tokens - used)
        n = yield from nudged_word(models["nudger"], views["nudger"], answer, gate_p=None, cap=cap, choose=choose)
        if n is None:
            return Result("eos")
        used += n
    elif not (yield from _base_token(models["base"], views["base"], answer, choose)):
        return Result("eos")
    else:
        used += 1
    rest = max_tokens - used
    if mode == "nudged":
        return (yield from nudged_steps(models["base"], models["nudger"], views["base"], views["nudger"], answer,
                                        gamma=gamma, max_tokens=rest, word_cap=word_cap, choose=choose,
                                        gate=gate))  # fmt: skip
    role: Role = "base" if mode == "base" else "nudger"
    source = "base" if role == "base" else "nudge"
    return (yield from single_steps(models[role], views[role], answer, source=source, max_tokens=rest, choose=choose))
