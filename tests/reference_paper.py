"""The authors' nudging algorithm (docs/method.md#paper-mode) written out plainly, every completion call evaluated
from scratch, as an API-style client would: the yardstick for paper mode."""

from __future__ import annotations

import codecs

import numpy as np

from nudge_local.engine.local import Model


def api_complete(model: Model, text: str, n: int):
    """A completion call written out on its own: greedy tokens with their text and top-1 probability."""
    model.reset()  # a completions API re-reads the whole text on every call
    ids = model.tokenize(text)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    out = []
    for _ in range(n):
        logits = model.logits(ids).astype(np.float64)
        t = int(np.argmax(logits))
        if model.is_eog(t):
            return out, "stop"
        out.append((decoder.decode(model.piece(t)), float(1.0 / np.exp(logits - logits[t]).sum())))
        ids = ids + [t]
    return out, "length"


def reference_paper(base, nudger, pb, pn, *, gamma, chunk=16, max_rounds=150, max_tokens=0):
    output, words_out, last, count = "", [], "", 0

    def budget(text):
        n = len(base.tokenize(text)) - len(base.tokenize(""))
        return max_tokens > 0 and n >= max_tokens

    def trim(text):
        text = text.strip()
        while True:
            lo, hi, best = 0, len(text), 0
            while lo <= hi:
                mid = (lo + hi) // 2
                if mid >= 30 and text[: len(text) - mid].endswith(text[len(text) - mid :]):
                    best = mid
                    lo = mid + 1
                else:
                    hi = mid - 1
            if best == 0:
                return text
            text = text[: len(text) - best]

    rounds = 0
    reason = "round"
    while rounds < max_rounds:
        rounds += 1
        draft, finish = api_complete(nudger, pn + output, chunk)
        draft_text = "".join(t for t, _ in draft)
        if finish == "stop":
            output += draft_text
            if draft_text:
                words_out.append(draft_text)
            reason = "nudging_model_stop"
            break
        stripped = draft_text.lstrip(" ")
        lead = " " * (len(draft_text) - len(stripped))
        words = stripped.split(" ")
        m = len(words)
        k = 1
        accepted = None
        if m > 1:
            k = m - 1
            for j in range(1, m):
                if words[j] == "":
                    continue
                probe = api_complete(base, pb + output + lead + " ".join(words[:j]), chunk)
                toks = probe[0]
                first_text, first_p = toks[0] if toks else ("", 0.0)
                if (" " + words[j]).startswith(first_text) or first_p >= gamma:
                    k, accepted = j, probe
                    break
        chosen = lead + " ".join(words[:k])
        if chosen == last:
            count += 1
            if count == 3:
                reason = "repeated_nudging_words"
                break
        else:
            last, count = chosen, 0
        output += chosen
        words_out.append(chosen)
        if accepted is None or not "".join(t for t, _ in accepted[0]):
            if budget(output):
                reason = "length"
                break
            continue
        toks, finish = accepted
        base_text = toks[0][0]
        current, first_chunk = toks[1:], True
        while True:
            current_text = "".join(t for t, _ in current)
            if current_text in base_text:
                break
            kept = ""
            low = False
            for t, p in current:
                if p < gamma:
                    low = True
                    break
                kept += t
            if len(kept.split(" ")) > 5 and kept in output + base_text:
                break
            base_text += kept
            if low:
                break
            if not first_chunk and finish == "stop":
                break
            if budget(output + base_text):
                break
            current, finish = api_complete(base, pb + output + base_text, chunk)
            first_chunk = False
        output += base_text
        if budget(output):
            reason = "length"
            break
    return trim(output), words_out, reason, rounds
