"""Paper mode (docs/method.md#paper-mode): the authors' published nudging algorithm, reproduced
exactly, with every completion call answered from a prefix-cached llama.cpp context instead of
re-sent text.

A round reads top to bottom: the nudger drafts (`complete`), `choose_nudging_words` probes the
base at word boundaries, `Output.commit` checks for repeats, and `continue_with_base` lets the base
write until it is unsure. The final trim (`trim_repeated_suffix`) is applied by the stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nudge_local.engine.events import PaperResult, Source, StopReason, TokenEvent
from nudge_local.engine.interface import Completion, CompletionToken, ScoringModel
from nudge_local.engine.stream import Steps


def complete(model: ScoringModel, text: str, max_tokens: int, *, reading: bool = True) -> Completion:
    """What a completions server returns for `text` (ScoringModel.complete): a local file evaluates
    only what its context does not already hold; a served model answers in one request, as the
    authors' client asks."""
    return model.complete(text, max_tokens, reading=reading)


def api_style_complete(model: ScoringModel, text: str, n: int, *, reading: bool = True) -> Completion:  # noqa: ARG001
    """A completion call as the authors' API client makes it: the whole text evaluated again (its
    first call reads it all, whoever wrote it; a server's prefix cache decides what it re-reads)."""
    model.reset()
    return model.complete(text, n)


Complete = Callable[..., Completion]  # (model, text, max_tokens, *, reading=True), as `complete`


def trim_repeated_suffix(text: str) -> str:
    """Strip both ends, then drop a repeated suffix while one is found, with the authors' binary
    search (not monotonic: it does not always find the longest repeat, and that is reproduced)."""
    text = text.strip()
    while True:
        lo, hi, found = 0, len(text), 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if mid >= 30 and text[:-mid].endswith(text[-mid:]):
                found, lo = mid, mid + 1
            else:
                hi = mid - 1
        if not found:
            return text
        text = text[:-found]


def _events(tokens: list[CompletionToken], source: Source, limit: int | None = None) -> Steps:
    """The tokens whose text makes up the first `limit` characters (all when None), as the mode's
    (event, bytes) pairs; a token cut by the limit keeps its id and the part of its text taken."""
    used = 0
    for t in tokens:
        if limit is not None and used >= limit:
            break
        text = t.text if limit is None else t.text[: limit - used]
        yield TokenEvent("", source, t.token, t.p if source == "base" else None, t.p), text.encode("utf-8")
        used += len(t.text)


def split_words(draft: str) -> tuple[str, list[str]]:
    """The draft's leading spaces, and the rest split on the ASCII space only (newlines stay inside)."""
    lead = draft[: len(draft) - len(draft.lstrip(" "))]
    return lead, draft[len(lead) :].split(" ")


def choose_nudging_words(
    call: Callable[..., Completion], base: ScoringModel, context: str, words: list[str], gamma: float
) -> tuple[int, Completion | None]:
    """How many of the draft's words to commit, and the base's probe at the accepted boundary (None
    when none was accepted). `context` is the base's text up to the draft's first word. The boundary
    before word k is accepted when the base's first token there starts " " + words[k], or the base
    is sure of it (top-1 >= gamma)."""
    for k in range(1, len(words)):
        if not words[k]:
            continue  # two spaces: no boundary to probe
        probe = call(base, context + " ".join(words[:k]))
        first = probe.tokens[0] if probe.tokens else None
        if first is None or (" " + words[k]).startswith(first.text) or first.p >= gamma:
            return k, probe
    return (len(words) - 1 if len(words) > 1 else 1), None


def _confident(tokens: list[CompletionToken], gamma: float) -> list[CompletionToken]:
    """The tokens up to, not including, the first whose top-1 probability is below gamma."""
    for i, t in enumerate(tokens):
        if t.p < gamma:
            return tokens[:i]
    return tokens


def continue_with_base(
    call: Callable[..., Completion],
    base: ScoringModel,
    base_prompt: str,
    output: str,
    probe: Completion,
    gamma: float,
    over_budget: Callable[[str], bool],
) -> list[CompletionToken]:
    """The base writes on from the accepted probe until it is unsure, repeats itself, ends, or the
    budget is spent; returns the tokens it wrote this round."""
    taken = [probe.tokens[0]]  # the probe's first token is taken without any check
    text = probe.tokens[0].text
    chunk, from_probe, finish = probe.tokens[1:], True, probe.finish
    while True:
        if "".join(t.text for t in chunk) in text:
            break
        keep = _confident(chunk, gamma)
        kept = "".join(t.text for t in keep)
        if len(kept.split(" ")) > 5 and kept in output + text:
            break
        text += kept
        taken += keep
        if len(keep) < len(chunk) or (not from_probe and finish == "stop") or over_budget(output + text):
            break
        nxt = call(base, base_prompt + output + text, reading=False)  # it writes on from its own tokens
        chunk, from_probe, finish = nxt.tokens, False, nxt.finish
    return taken


@dataclass
class Output:
    """The answer so far, the nudging words committed, and the repeat counter."""

    text: str = ""
    nudging_words: list[str] = field(default_factory=list)
    last_chosen: str = ""
    repeats: int = 0

    def repeated(self, chosen: str) -> bool:
        """The same nudging words a third time in a row after their first: the answer stops."""
        if chosen == self.last_chosen:
            self.repeats += 1
            return self.repeats >= 3
        self.last_chosen, self.repeats = chosen, 0
        return False

    def result(self, reason: StopReason, rounds: int) -> PaperResult:
        return PaperResult(reason, rounds, tuple(self.nudging_words))


def paper_steps(
    base: ScoringModel,
    nudger: ScoringModel,
    base_prompt: str,
    nudger_prompt: str,
    *,
    gamma: float,
    chunk: int = 16,
    max_rounds: int = 150,
    max_tokens: int = 0,
    complete: Complete = complete,
) -> Steps:
    """Yields the committed text as events (nudging words: source "nudge"; the base's continuation:
    "base"). `complete` answers a completion call; benchmarks pass api_style_complete to measure
    the authors' re-send-everything cost. `max_tokens` is a budget in base tokens (0: none)."""
    out = Output()

    def call(model: ScoringModel, text: str, *, reading: bool = True) -> Completion:
        return complete(model, text, chunk, reading=reading)

    written = 0  # tokens yielded: the budget of a text-only served base, which cannot tokenize

    def over_budget(text: str) -> bool:
        if max_tokens <= 0:
            return False
        n = base.count_tokens(text)
        return (written if n is None else n - (base.count_tokens("") != 0)) >= max_tokens

    def counted(events: Steps):
        nonlocal written
        for e in events:
            written += 1
            yield e

    for rnd in range(1, max_rounds + 1):
        draft = call(nudger, nudger_prompt + out.text)
        if draft.finish == "stop":
            out.text += draft.text
            if draft.text:
                out.nudging_words.append(draft.text)
            yield from counted(_events(draft.tokens, "nudge"))
            return out.result("nudging_model_stop", rnd)
        lead, words = split_words(draft.text)
        k, probe = choose_nudging_words(call, base, base_prompt + out.text + lead, words, gamma)
        chosen = lead + " ".join(words[:k])
        if out.repeated(chosen):
            return out.result("repeated_nudging_words", rnd)
        out.text += chosen
        out.nudging_words.append(chosen)
        yield from counted(_events(draft.tokens, "nudge", len(chosen)))
        if probe is not None and probe.text:
            taken = continue_with_base(call, base, base_prompt, out.text, probe, gamma, over_budget)
            out.text += "".join(t.text for t in taken)
            yield from counted(_events(taken, "base"))
        if over_budget(out.text):
            return out.result("length", rnd)
    return out.result("round", max_rounds)
