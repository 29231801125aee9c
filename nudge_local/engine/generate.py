"""The engine's entry point: one decoding mode over rendered prompts, as an event stream
(docs/architecture.md). Prompts come from prompts.render_prompts."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.events import MODES, Done, Mode, Role, TokenEvent
from nudge_local.engine.gates import check_gate
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.loom import Branch, branch_steps
from nudge_local.engine.paper_mode import paper_steps, trim_repeated_suffix
from nudge_local.engine.prompts import Prompts
from nudge_local.engine.sampling import Chooser, Sampling
from nudge_local.engine.speculative import DraftSizer, speculative_steps
from nudge_local.engine.stream import Steps, stream
from nudge_local.engine.token_mode import nudged_steps, single_steps
from nudge_local.engine.views import Answer, TokenSpaceView, make_views, view_of

# A mode's steps, the models it uses, their prompt lengths
Plan = tuple[Steps, dict[Role, ScoringModel], dict[Role, int]]


def _nudged(prompts: Prompts, base: ScoringModel, nudger: ScoringModel, *, speculative: bool, draft: int | None,
            sizer: DraftSizer | None, text_space: bool | None, branch: Branch | None, **rule) -> Plan:  # fmt: skip
    answer, bview, nview = make_views(base, nudger, prompts.base, prompts.nudge, text_space=text_space)
    models = {"base": base, "nudger": nudger}
    prompt_tokens = {"base": bview.prompt_tokens, "nudger": nview.prompt_tokens}
    if branch is not None:  # token mode from the branch on: speculative would write the same
        views = {"base": bview, "nudger": nview}
        return branch_steps(models, views, answer, branch, mode="nudged", **rule), models, prompt_tokens
    drafts = speculative and isinstance(bview, TokenSpaceView)  # drafts need shared token ids
    if drafts and not base.scores_drafts:
        note(
            f"The base's server ({base.path}) cannot score a draft in one request; "
            f"speculative nudging runs as token mode."
        )
        drafts = False
    if drafts:
        steps = speculative_steps(base, nudger, bview, nview, answer, draft_len=draft, sizer=sizer, **rule)
    else:
        steps = nudged_steps(base, nudger, bview, nview, answer, **rule)
    return steps, models, prompt_tokens


def _paper(prompts: Prompts, base: ScoringModel, nudger: ScoringModel, *, gamma: float, chunk: int, max_rounds: int,
           max_tokens: int) -> Plan:  # fmt: skip
    steps = paper_steps(base, nudger, prompts.base, prompts.nudge, gamma=gamma, chunk=chunk, max_rounds=max_rounds,
                        max_tokens=max_tokens)  # fmt: skip
    prompt_tokens = {"base": prompt_length(base, prompts.base), "nudger": prompt_length(nudger, prompts.nudge)}
    return steps, {"base": base, "nudger": nudger}, prompt_tokens


def prompt_length(model: ScoringModel, prompt: str) -> int:
    """Tokens in `prompt` (a text-only served model counts them in its first answer: 0 here)."""
    return model.count_tokens(prompt) or 0


def note(message: str) -> None:
    """A fallback the user should know of, on the nudge_local.notes logger: each consumer decides
    how it says it (the command line once per process, on stderr; the chat not at all)."""
    logging.getLogger("nudge_local.notes").warning(message)


def _single(role: Role, model: ScoringModel, prompt: str, *, max_tokens: int, choose: Chooser,
            branch: Branch | None, word_cap: int) -> Plan:  # fmt: skip
    answer = Answer()
    view = view_of(model, prompt, answer, text_space=False)
    if branch is not None:
        steps = branch_steps({role: model}, {role: view}, answer, branch, mode=role, gamma=0.0, max_tokens=max_tokens,
                             word_cap=word_cap, choose=choose)  # fmt: skip
    else:
        source = "base" if role == "base" else "nudge"
        steps = single_steps(model, view, answer, source=source, max_tokens=max_tokens, choose=choose)
    return steps, {role: model}, {role: view.prompt_tokens}


def generate(
    prompts: Prompts,
    *,
    mode: Mode = "nudged",
    base: ScoringModel | None = None,
    nudger: ScoringModel | None = None,
    gamma: float = 0.4,
    gate: str = "top1",
    max_tokens: int = 256,
    word_cap: int = 16,
    sampling: Sampling | None = None,
    stop_strings: Sequence[str] = (),
    text_space: bool | None = None,
    chunk: int = 16,
    max_rounds: int = 150,
    speculative: bool = True,
    draft: int | None = None,
    sizer: DraftSizer | None = None,
    top_n: int = 0,
    entropy: bool = False,
    branch: Branch | None = None,
) -> Iterator[TokenEvent | Done]:
    """Yield one TokenEvent per token, then Done. `gate` (gates.py) is the rule that hands a position to
    the nudger, `gamma` its threshold: "top1" (the paper's), "margin" or "entropy". `mode` is
    "nudged" (token mode; speculative where
    the vocabularies match unless `speculative` is False, each draft sized from measured costs or
    `draft` tokens long; `sizer` keeps those costs across a loaded pair's answers, a fresh one where
    None), "base", "nudger" or "paper" (the authors' algorithm; `chunk` and
    `max_rounds` are its L and round limit, `max_tokens` its budget in base tokens, 0 for none;
    no stop strings; its Done.result is a PaperResult). With `top_n` > 0 each TokenEvent carries
    the writing model's top_n tokens at its position (not in paper mode, which sees only the
    completions' chosen tokens). With `entropy` each TokenEvent carries the entropy of the writing
    model's row and, where the base was asked there, of the base's (`base_entropy`), and Stats their
    branching factors (not in paper mode either). With `branch` the answer is that branch
    (loom.py): its kept tokens again, then its own position, then the mode from there, in token mode
    where nudged (speculative would write the same)."""
    choose = Chooser(sampling or Sampling(), top_n, entropy)
    trim = None
    if mode == "nudged":
        rule = dict(gamma=gamma, max_tokens=max_tokens, word_cap=word_cap, choose=choose, gate=check_gate(gate))
        plan = _nudged(prompts, base, nudger, speculative=speculative, draft=draft, sizer=sizer, text_space=text_space,
                       branch=branch, **rule)
    elif mode == "paper":
        if branch is not None:
            raise NudgeError("Paper mode reproduces the authors' algorithm as published; branch a nudged answer.")
        if check_gate(gate) != "top1":
            raise NudgeError(f"Paper mode keeps the paper's gate, top1; the {gate} gate is for nudged mode.")
        plan = _paper(prompts, base, nudger, gamma=gamma, chunk=chunk, max_rounds=max_rounds, max_tokens=max_tokens)
        stop_strings, trim = (), trim_repeated_suffix  # the published algorithm has no stop strings
    elif mode == "base":
        plan = _single("base", base, prompts.base, max_tokens=max_tokens, choose=choose, branch=branch,
                       word_cap=word_cap)
    elif mode == "nudger":
        plan = _single("nudger", nudger, prompts.nudge, max_tokens=max_tokens, choose=choose, branch=branch,
                       word_cap=word_cap)
    else:
        raise NudgeError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    return stream(*plan, stop_strings=stop_strings, trim=trim, kept=len(branch.kept) if branch else 0)
