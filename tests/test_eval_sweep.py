"""What `eval` sweeps (nudge_local/evaluate/sweep.py): --gate and --gamma read into each gate's
thresholds, the defaults, paper mode's gate, and `auto` calibrated once per gate that asks for it."""

from __future__ import annotations

import pytest

from nudge_local.calibrate import Calibration
from nudge_local.engine.errors import NudgeError
from nudge_local.evaluate.sweep import AUTO, GRID, check_modes, parse_sweep, resolve_auto


def sweep(gate=None, *gamma, default_gate="top1", default_gamma=0.4):
    return parse_sweep(gate, list(gamma) or None, default_gate, default_gamma)


def test_one_gate_runs_the_setting_or_its_list():
    assert sweep() == {"top1": [0.4]}  # as `run` would: the gamma setting
    assert sweep(default_gamma=None) == {"top1": [AUTO]}  # gamma: auto in the settings
    assert sweep(default_gate="entropy", default_gamma=2.5) == {"entropy": [2.5]}
    assert sweep("margin", "0.3,0.1,0.3") == {"margin": [0.1, 0.3]}
    assert sweep("entropy", "3,1") == {"entropy": [1.0, 3.0]}  # a lone entropy gate takes the bare list


def test_several_gates():
    assert sweep("top1,margin,entropy") == GRID  # no --gamma: each gate's grid
    assert sweep("entropy,top1") == {"entropy": GRID["entropy"], "top1": GRID["top1"]}  # in the order given
    # a bare list is the probability gates'; entropy, in nats, keeps its own list or grid
    assert sweep("top1,margin,entropy", "0.2,0.4") == {"top1": [0.2, 0.4], "margin": [0.2, 0.4],
                                                       "entropy": GRID["entropy"]}  # fmt: skip
    assert sweep("top1,entropy", "0.2", "entropy=1.5") == {"top1": [0.2], "entropy": [1.5]}
    assert sweep("top1,entropy", "0.2;entropy=1.5,2") == {"top1": [0.2], "entropy": [1.5, 2.0]}
    # auto has no unit: it goes to every gate, entropy too
    assert sweep("top1,entropy", "auto") == {"top1": [AUTO], "entropy": [AUTO]}
    assert sweep("top1,entropy", "auto,0.3") == {"top1": [AUTO, 0.3], "entropy": [AUTO, *GRID["entropy"]]}
    # without --gate, the gates --gamma names
    assert sweep(None, "top1=0.1", "entropy=auto,2") == {"top1": [0.1], "entropy": [AUTO, 2.0]}


@pytest.mark.parametrize(
    "gate, gamma, phrase",
    [
        ("top1,nope", [], "option --gate takes a comma-separated list of top1, margin, entropy (got 'top1,nope')"),
        (",", [], "option --gate takes"),
        ("top1", ["0.1,,x"], "option --gamma takes thresholds as a comma-separated list"),
        ("top1", [";"], None),  # nothing given: the setting
        ("top1", ["top1=;"], "option --gamma takes thresholds"),
        ("top1", ["1.2"], "the top1 gate's threshold is a probability from 0 to 1 (got 1.2)"),
        ("margin", ["-0.1"], "a threshold is at least 0 (got -0.1 for the margin gate)"),
        ("top1,entropy", ["entropy=-2"], "at least 0 (got -2 for the entropy gate)"),
        ("top1", ["entropy=2"], "gives thresholds for the entropy gate; add it to --gate"),
        (None, ["p=0.2"], "option --gamma names the gate 'p'"),
    ],
)
def test_bad_lists_are_one_sentence(gate, gamma, phrase):
    if phrase is None:
        assert sweep(gate, *gamma) == {"top1": [0.4]}
        return
    with pytest.raises(NudgeError) as e:
        sweep(gate, *gamma)
    message = str(e.value)
    assert phrase in message and message.endswith(".") and ". " not in message and "\n" not in message


def test_paper_mode_keeps_top1():
    assert check_modes({"top1": [0.4]}, ["nudged", "paper"]) is None
    note = check_modes({"top1": [0.4], "margin": [0.1]}, ["nudged", "paper"])
    assert note and "paper mode keeps the paper's gate, top1" in note and "margin in nudged mode only" in note
    with pytest.raises(NudgeError, match="Paper mode keeps the paper's gate, top1; add top1 to --gate"):
        check_modes({"entropy": [2.0]}, ["nudged", "paper"])
    with pytest.raises(NudgeError, match="The margin gate runs in nudged mode only"):
        check_modes({"top1": [0.4], "margin": [0.1]}, ["base", "paper"])


def test_auto_is_calibrated_once_per_gate_that_asks():
    calls = []

    def fake(gate):
        calls.append(gate)
        return Calibration(gamma={"top1": 0.25, "entropy": 2.0}[gate], ratio=0.11, target=0.12, gate=gate, tokens=300,
                           steps=4)  # fmt: skip

    resolved, made = resolve_auto({"top1": [AUTO, 0.1, 0.25], "margin": [0.2], "entropy": [AUTO]}, fake)
    assert calls == ["top1", "entropy"]
    assert resolved == {"top1": [0.1, 0.25], "margin": [0.2], "entropy": [2.0]}  # 0.25 once
    assert [c.gate for c in made] == ["top1", "entropy"]
    assert resolve_auto({"top1": [0.4]}, fake) == ({"top1": [0.4]}, []) and calls == ["top1", "entropy"]
