"""Multi-turn prompts that fit the models' contexts (docs/method.md#long-conversations): with the
policy "drop_oldest" the oldest whole turns leave both models' prompts until each prompt plus room for
the answer fits its model's context; the system prompt and the current question always stay."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nudge_local.engine.errors import ContextFull
from nudge_local.engine.prompts import DEFAULT_BASE_FORMAT, Prompts, Turn, render_prompts

POLICIES = ("drop_oldest", "stop")
MIN_ROOM = 4  # the answer's room where max_tokens cannot fit: at least a quarter of the context
SPARE = 4  # a drop frees at least a further quarter of the context, so the next one comes late


@dataclass(frozen=True)
class Fitted:
    """The prompts of one question, and how many of the oldest turns they leave out."""

    prompts: Prompts
    dropped: int  # oldest turns outside the prompts
    held: int  # turns the prompts hold
    tokens: Mapping[str, int]  # each model's prompt tokens (models that count them)


def prompt_sizes(models: Mapping[str, object], prompts: Prompts) -> dict[str, int]:
    """Each model's prompt tokens; a model that cannot count them (a text-only server) is left out."""
    out = {}
    for role, model in models.items():
        text = prompts.base if role == "base" else prompts.nudge
        n = model.count_tokens(text) if text is not None and model is not None else None
        if n is not None:
            out[role] = n
    return out


def room(model, bare: int, max_tokens: int) -> int:
    """Tokens kept free for the answer: max_tokens where it fits beside the bare prompt (no earlier
    turns), else a quarter of the context."""
    n_ctx = model.n_ctx
    if max_tokens and bare + max_tokens <= n_ctx:
        return max_tokens
    return n_ctx // MIN_ROOM


def fit_history(
    base,
    nudger,
    question: str,
    history: Sequence[Turn] = (),
    *,
    system: str = "",
    base_format: str = DEFAULT_BASE_FORMAT,
    chat_template: str | None = None,
    max_tokens: int = 0,
    policy: str = "drop_oldest",
    dropped: int = 0,
) -> Fitted:
    """The prompts of `question` after `history`, leaving out at least the `dropped` oldest turns
    (a conversation's earlier choice: keeping it keeps the prompts' prefix, so the KV caches stay).
    With "drop_oldest", more are left out where a prompt and its answer's room do not fit; a drop
    frees a further quarter of the context at once, so it happens rarely. With "stop" nothing is
    left out (a prompt too long is the model's ContextFull). A question that does not fit alone is
    one ContextFull sentence either way."""
    models = {"base": base, "nudger": nudger}

    def render(d: int) -> tuple[Prompts, dict[str, int]]:
        p = render_prompts(base, nudger, question, history=history[d:], system=system, base_format=base_format,
                           chat_template=chat_template)  # fmt: skip
        return p, prompt_sizes(models, p)

    dropped = min(dropped, len(history)) if policy == "drop_oldest" else 0
    prompts, sizes = render(dropped)
    if policy != "drop_oldest" or not sizes:
        return Fitted(prompts, dropped, len(history) - dropped, sizes)
    _, bare = render(len(history))
    need = {r: room(models[r], bare[r], max_tokens) for r in sizes}

    def fits(s: dict[str, int], spare: int = 0) -> bool:
        return all(s[r] + need[r] + spare * models[r].n_ctx // SPARE <= models[r].n_ctx for r in s)

    for r, n in bare.items():
        if n + need[r] > models[r].n_ctx:
            raise ContextFull(
                f"The question alone needs {n} tokens of the {r} model's {models[r].n_ctx}-token context, with "
                f"{need[r]} kept for the answer; shorten it or raise the context size."
            )
    if fits(sizes):
        return Fitted(prompts, dropped, len(history) - dropped, sizes)
    first_fit = None
    for d in range(dropped + 1, len(history) + 1):  # prompts shrink as d grows
        prompts, sizes = render(d)
        if fits(sizes, spare=1):  # the fewest turns out that leave a quarter of the context spare
            return Fitted(prompts, d, len(history) - d, sizes)
        if first_fit is None and fits(sizes):
            first_fit = Fitted(prompts, d, len(history) - d, sizes)
    return first_fit  # none leaves a quarter spare: the fewest turns out that fit (the bare prompt does)
