"""Where the nudger writes: the gate, a rule over the base's next-token row and one threshold, gamma
(docs/method.md#gates).

- `top1`, the paper's: the nudger writes where the base's top-1 probability is below gamma.
- `margin`: where the base's top-1 probability minus its top-2 probability is below gamma (the base
  is torn between two tokens, however sure it is of the pair).
- `entropy`: where the entropy of the base's next-token distribution, in nats, is above gamma (the
  base's doubt spread over the whole row, not only its best token).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from nudge_local.engine.errors import NudgeError
from nudge_local.engine.sampling import entropy, top_k

GateName = Literal["top1", "margin", "entropy"]
GATES: tuple[GateName, ...] = get_args(GateName)


def check_gate(gate: str) -> GateName:
    """`gate` when it is one the engine knows, else one sentence naming them."""
    if gate not in GATES:
        raise NudgeError(f"Unknown gate {gate!r}; choose one of {', '.join(GATES)}.")
    return gate  # type: ignore[return-value]


def gate_value(gate: GateName, logits: np.ndarray, top1_p: float, row_entropy: float | None = None) -> float:
    """What `gate` reads of the base's row (`top1_p`: its top-1 probability, already known;
    `row_entropy`: its entropy, where the caller measured it already)."""
    if gate == "top1":
        return top1_p
    if gate == "margin":
        best = top_k(logits, 2)
        return best[0][1] - (best[1][1] if len(best) > 1 else 0.0)
    return entropy(logits) if row_entropy is None else row_entropy


def opens(gate: GateName, gamma: float, logits: np.ndarray, top1_p: float, row_entropy: float | None = None) -> bool:
    """Whether the gate hands this position to the nudger."""
    value = gate_value(gate, logits, top1_p, row_entropy)
    return value > gamma if gate == "entropy" else value < gamma
