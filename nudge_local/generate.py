"""The engine's entry point: prompts for both models, then one decoding mode as an event stream."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from nudge_local.errors import NudgeError
from nudge_local.events import Done, TokenEvent
from nudge_local.model import Model
from nudge_local.paper_mode import paper_steps
from nudge_local.prompts import DEFAULT_BASE_FORMAT, Turn, base_prompt, chat_messages, render_chat_template
from nudge_local.sampling import Chooser, Sampling
from nudge_local.speculative import speculative_steps
from nudge_local.stream import stream
from nudge_local.token_mode import nudged_steps, single_steps
from nudge_local.views import Answer, TokenSpaceView, make_views

MODES = ("nudged", "base", "nudger", "paper")


@dataclass(frozen=True)
class Prompts:
    base: str | None
    nudge: str | None


def nudger_prompt(
    nudger: Model, question: str, *, history: Sequence[Turn] = (), system: str = "", chat_template: str | None = None
) -> str:
    template = chat_template or nudger.chat_template
    if not template:
        raise NudgeError(
            f"The nudger {nudger.path.name} has no chat template in its GGUF; give one with --chat-template FILE."
        )
    bos = nudger.piece(nudger.bos).decode("utf-8", "replace") if nudger.bos >= 0 else ""
    eos = nudger.piece(nudger.eos).decode("utf-8", "replace") if nudger.eos >= 0 else ""
    messages = chat_messages(question, history=history, system=system)
    return render_chat_template(template, messages, bos_token=bos, eos_token=eos)


def render_prompts(
    base: Model | None,
    nudger: Model | None,
    question: str,
    *,
    history: Sequence[Turn] = (),
    system: str = "",
    base_format: str = DEFAULT_BASE_FORMAT,
    chat_template: str | None = None,
) -> Prompts:
    return Prompts(
        base=base_prompt(question, history=history, system=system, fmt=base_format) if base else None,
        nudge=nudger_prompt(nudger, question, history=history, system=system, chat_template=chat_template)
        if nudger
        else None,
    )


def generate(
    prompts: Prompts,
    *,
    mode: str = "nudged",
    base: Model | None = None,
    nudger: Model | None = None,
    gamma: float = 0.4,
    max_tokens: int = 256,
    word_cap: int = 16,
    sampling: Sampling | None = None,
    stop_strings: Sequence[str] = (),
    text_space: bool | None = None,
    chunk: int = 16,
    max_rounds: int = 150,
    speculative: bool = True,
    draft: int | None = None,
) -> Iterator[TokenEvent | Done]:
    """Yield one TokenEvent per token, then Done. `mode` is "nudged" (token mode; speculative where
    the vocabularies match unless `speculative` is False, each draft sized from measured costs or
    `draft` tokens long), "base", "nudger" or "paper" (the authors' algorithm; `chunk` and
    `max_rounds` are its L and round limit, `max_tokens` its budget in base tokens, 0 for none; its
    Done.extra holds rounds and nudging_words)."""
    choose = Chooser(sampling or Sampling())
    if mode == "nudged":
        answer, bview, nview = make_views(base, nudger, prompts.base, prompts.nudge, text_space=text_space)
        kw = dict(gamma=gamma, max_tokens=max_tokens, word_cap=word_cap, choose=choose)
        if speculative and isinstance(bview, TokenSpaceView):  # drafts need shared token ids
            steps = speculative_steps(base, nudger, bview, nview, answer, draft=draft, **kw)
        else:
            steps = nudged_steps(base, nudger, bview, nview, answer, **kw)
        models = {"base": base, "nudger": nudger}
        prompt_tokens = {"base": bview.prompt_tokens, "nudger": nview.prompt_tokens}
    elif mode == "paper":
        steps = paper_steps(
            base, nudger, prompts.base, prompts.nudge, gamma=gamma, chunk=chunk, max_rounds=max_rounds,
            max_tokens=max_tokens,
        )  # fmt: skip
        models = {"base": base, "nudger": nudger}
        prompt_tokens = {"base": len(base.tokenize(prompts.base)), "nudger": len(nudger.tokenize(prompts.nudge))}
        stop_strings = ()  # the published algorithm has none
    elif mode in ("base", "nudger"):
        model, prompt = (base, prompts.base) if mode == "base" else (nudger, prompts.nudge)
        answer = Answer()
        view = TokenSpaceView(model, prompt, answer)
        source = "base" if mode == "base" else "nudge"
        steps = single_steps(model, view, answer, source=source, max_tokens=max_tokens, choose=choose)
        models = {mode: model}
        prompt_tokens = {mode: view.prompt_tokens}
    else:
        raise NudgeError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    return stream(steps, models, prompt_tokens, stop_strings=stop_strings)
