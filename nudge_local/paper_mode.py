"""Paper mode (BRIEF 1.2): the authors' published nudging algorithm, reproduced exactly, with every
"completion call" answered from a prefix-cached llama.cpp context instead of re-sent text."""

from __future__ import annotations

from collections.abc import Generator

from nudge_local.events import TokenEvent
from nudge_local.model import Completion, CompletionToken, Model

Steps = Generator[tuple[TokenEvent, bytes], None, tuple[str, dict]]


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


def api_style_complete(model: Model, text: str, n: int) -> Completion:
    """A completion call as the authors' API client makes it: the whole text evaluated again."""
    model.reset()
    return model.complete(text, n)


def _events(tokens: list[CompletionToken], source: str, limit: int | None = None) -> list[TokenEvent]:
    """Events for the tokens whose text makes up the first `limit` characters (all when None); a
    token cut by the limit keeps its id and the part of its text that was taken."""
    out, used = [], 0
    for t in tokens:
        text = t.text if limit is None else t.text[: max(0, limit - used)]
        if limit is not None and used >= limit:
            break
        out.append(TokenEvent(text, source, t.token, t.p if source == "base" else None, t.p))
        used += len(t.text)
    return out


def paper_steps(
    base: Model,
    nudger: Model,
    base_prompt: str,
    nudger_prompt: str,
    *,
    gamma: float,
    chunk: int = 16,
    max_rounds: int = 150,
    max_tokens: int = 0,
    complete=None,
) -> Steps:
    """Yields the committed text as events (nudging words: source "nudge"; base continuation:
    "base"), returns (stop reason, {"text", "rounds", "nudging_words"}) with the final trimmed text."""
    # `complete(model, text, n)` answers a completion call; the default reuses the prefix cache,
    # benchmarks pass api_style_complete to measure the authors' re-send-everything cost.
    complete = complete or (lambda model, text, n: model.complete(text, n))
    output = ""
    nudging_words: list[str] = []
    last_chosen, repeats = "", 0

    def over_budget(text: str) -> bool:  # the length budget, in the base model's tokens
        return max_tokens > 0 and len(base.tokenize(text)) - (base.tokenize("") != []) >= max_tokens

    def done(reason: str, rounds: int):
        return reason, {"text": trim_repeated_suffix(output), "rounds": rounds, "nudging_words": nudging_words}

    def emit(evs):
        for ev in evs:
            yield ev, ev.text.encode("utf-8")

    for rnd in range(1, max_rounds + 1):
        draft: Completion = complete(nudger, nudger_prompt + output, chunk)
        if draft.finish == "stop":
            output += draft.text
            if draft.text:
                nudging_words.append(draft.text)
            yield from emit(_events(draft.tokens, "nudge"))
            return done("nudging_model_stop", rnd)

        text = draft.text
        lead = text[: len(text) - len(text.lstrip(" "))]
        words = text[len(lead) :].split(" ")
        k, probe = len(words) - 1 if len(words) > 1 else 1, None
        for j in range(1, len(words)):
            if not words[j]:
                continue  # two spaces: no boundary to probe
            p = complete(base, base_prompt + output + lead + " ".join(words[:j]), chunk)
            first = p.tokens[0] if p.tokens else None
            if first is None or (" " + words[j]).startswith(first.text) or first.p >= gamma:
                k, probe = j, p
                break

        chosen = lead + " ".join(words[:k])
        if chosen == last_chosen:
            repeats += 1
            if repeats >= 3:
                return done("repeated_nudging_words", rnd)
        else:
            last_chosen, repeats = chosen, 0
        output += chosen
        nudging_words.append(chosen)
        yield from emit(_events(draft.tokens, "nudge", len(chosen)))

        if probe is not None and probe.text:
            taken = [probe.tokens[0]]  # the first token is taken without any check
            round_text = probe.tokens[0].text
            chunk_tokens, from_probe, finish = probe.tokens[1:], True, probe.finish
            while True:
                chunk_text = "".join(t.text for t in chunk_tokens)
                if chunk_text in round_text:
                    break
                keep = []
                for t in chunk_tokens:
                    if t.p < gamma:
                        break
                    keep.append(t)
                low = len(keep) < len(chunk_tokens)
                kept = "".join(t.text for t in keep)
                if len(kept.split(" ")) > 5 and kept in output + round_text:
                    break
                round_text += kept
                taken += keep
                if low or (not from_probe and finish == "stop") or over_budget(output + round_text):
                    break
                nxt = complete(base, base_prompt + output + round_text, chunk)
                chunk_tokens, from_probe, finish = nxt.tokens, False, nxt.finish
            output += round_text
            yield from emit(_events(taken, "base"))
        if over_budget(output):
            return done("length", rnd)
    return done("round", max_rounds)
