"""What each model would have written at one position of an answer: its top-k tokens there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nudge_local.engine.events import TokenEvent
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.loom import written_piece
from nudge_local.engine.prompts import Prompts
from nudge_local.engine.sampling import top_k
from nudge_local.engine.views import Answer, make_views, view_of


@dataclass(frozen=True)
class Alternative:
    """One token a model could have written at a position: its text (decoded alone), probability,
    id in that model's vocabulary and bytes (what a branch taking it adds)."""

    text: str
    p: float
    token: int
    piece: bytes


def alternatives(
    prompts: Prompts,
    tokens: Sequence[TokenEvent],
    index: int,
    *,
    base: ScoringModel | None,
    nudger: ScoringModel | None,
    k: int = 5,
) -> dict[str, list[Alternative]]:
    """Each model's top-k next tokens before `tokens[index]`, most likely first, seeing the answer as
    it did during generation (shared ids or its own tokens of the text)."""
    if base is not None and nudger is not None:
        answer, bview, nview = make_views(base, nudger, prompts.base, prompts.nudge)
        views = {"base": (base, bview), "nudger": (nudger, nview)}
    else:
        answer = Answer()
        model, prompt, role = (base, prompts.base, "base") if base is not None else (nudger, prompts.nudge, "nudger")
        views = {role: (model, view_of(model, prompt, answer, text_space=False))}
    for t in tokens[:index]:
        answer.add(t.token, written_piece(t, base, nudger))
    out = {}
    for role, (model, view) in views.items():
        out[role] = [Alternative(model.piece(i).decode("utf-8", "replace"), p, i, model.piece(i))
                     for i, p in top_k(view.logits(), k)]  # fmt: skip
    return out
