"""A naive token mode (docs/method.md#token-mode) that evaluates every context from scratch, for comparison."""

from __future__ import annotations

import codecs

import numpy as np

from nudge_local.engine.local import Model
from nudge_local.engine.sampling import prob, top1

SPACE = b" \n\t"


def reference_token_mode(
    base: Model,
    nudger: Model,
    base_prompt: str,
    nudger_prompt: str,
    *,
    gamma: float,
    max_tokens: int,
    word_cap: int = 16,
    text_space: bool,
    detail: bool = False,
):
    """Returns ([(source, token)], stop reason, text as shown), and with `detail` also the decisions'
    margins by position: for position i (the i-th token written, or the stop there), how close the
    decisions made there came to going the other way: (the least |top-1 p - gamma| of a gate, the
    least logit gap between the top two tokens of a choice), and each token's probability under
    the model that wrote it. Greedy only."""
    ids: list[int] = []
    data = b""
    out: list[tuple[str, int]] = []
    margins: dict[int, tuple[float, float]] = {}
    probs: list[float] = []  # the writing model's probability of each token
    n_shared = min(base.n_vocab, nudger.n_vocab)

    def note(gate: float, logits) -> None:
        top2 = np.partition(logits, -2)[-2:]
        g, c = margins.get(len(out), (float("inf"), float("inf")))
        margins[len(out)] = (min(g, gate), min(c, float(top2[1] - top2[0])))

    def ask(model: Model, prompt: str):
        model.reset()  # no cache: every call evaluates its whole context
        if text_space:
            # The nudger reads the answer as shown (no leading whitespace); either model reads one
            # space between a prompt and an answer that meet on non-blank characters.
            answer = data.lstrip(SPACE) if model is nudger else data
            head = prompt.encode()
            if head and answer and head[-1] not in SPACE and answer[0] not in SPACE:
                head += b" "
            return model.logits(model.tokenize(head + answer))
        return model.logits(model.tokenize(prompt) + ids)[:n_shared]

    def emit(source: str, model: Model, t: int, p: float):
        nonlocal data
        ids.append(t)
        data += model.piece(t)
        out.append((source, t))
        probs.append(p)

    def result(reason: str):
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(data).strip(SPACE.decode())  # as shown
        return (out, reason, text, margins, probs) if detail else (out, reason, text)

    while True:
        if len(out) >= max_tokens:
            return result("length")
        lb = ask(base, base_prompt)
        t, p = top1(lb)
        note(abs(p - gamma), lb)
        if p >= gamma:
            if base.is_eog(t):
                return result("eos")
            emit("base", base, t, p)
            continue
        word = b""
        count = 0
        while True:
            if count == word_cap or len(out) >= max_tokens:
                break
            ln = ask(nudger, nudger_prompt)
            t = int(ln.argmax())
            note(float("inf"), ln)
            assert prob(ln, t) > 0
            if nudger.is_eog(t):
                if count == 0:
                    return result("eos")
                break
            piece = nudger.piece(t)
            if count > 0 and piece[:1] in (b" ", b"\n", b"\t") and any(c not in SPACE for c in word):
                break
            emit("nudge", nudger, t, prob(ln, t))
            word += piece
            count += 1
