"""Settings precedence (defaults < file < NUDGE_LOCAL_* < flags), and one sentence for every bad value."""

from __future__ import annotations

import dataclasses

import pytest

from nudge_local.config import FIELDS, load_settings
from nudge_local.engine.errors import NudgeError


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    monkeypatch.setenv("NUDGE_LOCAL_CONFIG", str(path))
    return path


def test_precedence_file_env_flags(cfg, monkeypatch):
    cfg.write_text("gamma: 0.2\nmax_tokens: 50\nseed: 3\nstop: ['Question:']\nsystem: from file\n")
    monkeypatch.setenv("NUDGE_LOCAL_GAMMA", "0.3")
    monkeypatch.setenv("NUDGE_LOCAL_MAX_TOKENS", "60")
    monkeypatch.setenv("NUDGE_LOCAL_SYSTEM", "from env: yes")  # text stays text, not YAML
    s = load_settings({"gamma": 0.5, "seed": None})
    assert s.gamma == 0.5 and s.sources["gamma"] == "flag --gamma"
    assert s.max_tokens == 60 and s.sources["max_tokens"] == "env NUDGE_LOCAL_MAX_TOKENS"
    assert s.seed == 3 and s.sources["seed"] == f"file {cfg}:3"
    assert s.stop == ("Question:",) and s.system == "from env: yes"
    assert s.temperature == 0.0 and s.sources["temperature"] == "default"


def test_every_setting_can_come_from_each_layer(cfg, monkeypatch):
    good = {
        "pair": "x", "base": "a.gguf", "nudge": "b.gguf", "gamma": 0.1, "max_tokens": 9, "temperature": 0.7,
        "top_p": 0.9, "seed": 4, "word_cap": 3, "context_size": 512, "gpu_layers": 0, "threads": 2,
        "base_format": "Q: {question}\nA:", "system": "hi", "stop": ["x", "y"], "chat_template": "t.jinja",
        "keymap": {"cancel": "ctrl+c"}, "base_model": "big", "nudge_model": "small", "base_api": "openai",
        "nudge_api": "llama-server", "timeout": 5.0, "context_overflow": "stop", "gate": "margin",
        "nudge_target": 0.2,
    }  # fmt: skip
    assert set(good) == set(FIELDS)
    import yaml

    cfg.write_text(yaml.safe_dump(good))
    s = load_settings()
    assert s.as_dict() == good and all(v.startswith("file ") for v in s.sources.values())
    with pytest.raises(dataclasses.FrozenInstanceError):  # one immutable value: a layer above makes a new one
        s.gamma = 0.9
    assert s.under({"gamma": 0.3, "system": None}, "pair p").gamma == 0.1  # the file's value stays over a pair's
    cfg.write_text("seed: 2\n")
    s = load_settings()
    under = s.under({"gamma": 0.3, "system": None}, "pair p")
    assert (under.gamma, under.source("gamma"), under.system) == (0.3, "pair p", "")
    assert (s.gamma, s.source("gamma")) == (0.4, "default")  # the value it was made from is unchanged
    for key in ("context_size", "gpu_layers", "threads"):
        monkeypatch.setenv(f"NUDGE_LOCAL_{key.upper()}", "auto")
    s = load_settings()
    assert s.context_size is None and s.gpu_layers is None and s.threads is None


@pytest.mark.parametrize(
    "text,phrase",
    [
        ("gamma: 1.5\n", ":1: gamma must be a number from 0 to 1 (got 1.5)"),
        ("seed: 1\ngamma: high\n", ":2: gamma must be a number"),
        ("max_tokens: 2.5\n", "max_tokens must be a whole number of at least 0"),
        ("top_p: 0\n", "top_p must be a number from"),
        ("temperature: .nan\n", "temperature must be a number"),
        ("threads: 0\n", 'threads must be a whole number of at least 1 or "auto"'),
        ("stop: 3\n", "stop must be a text or a list of texts"),
        ("base_format: 'Q: {q}'\n", "base_format must be a text with a {question} field"),
        ("colour: blue\n", "unknown setting 'colour'; the settings are pair, base"),
        ("- a\n- b\n", "must be a mapping"),
        ("gamma: [0.4\n", "YAML syntax error"),
        ("gamma: 0.4\n  max_tokens: 3\n", "YAML syntax error"),
    ],
)
def test_bad_file_is_one_sentence_with_file_and_line(cfg, text, phrase):
    cfg.write_text(text)
    with pytest.raises(NudgeError) as e:
        load_settings()
    msg = str(e.value)
    assert phrase in msg and str(cfg) in msg and "\n" not in msg


def test_bad_environment_and_flag_values(cfg, monkeypatch):
    monkeypatch.setenv("NUDGE_LOCAL_TOP_P", "lots")
    with pytest.raises(NudgeError, match="environment variable NUDGE_LOCAL_TOP_P: top_p must be a number"):
        load_settings()
    monkeypatch.delenv("NUDGE_LOCAL_TOP_P")
    with pytest.raises(NudgeError, match=r"option --max-tokens: max_tokens must be .* \(got -3\)"):
        load_settings({"max_tokens": -3})
    with pytest.raises(NudgeError, match="option --seed"):
        load_settings({"seed": -1})


def test_config_command_shows_values_and_sources(cfg, monkeypatch, capsys):
    from nudge_local.cli import main

    cfg.write_text("gamma: 0.25\n")
    monkeypatch.setenv("NUDGE_LOCAL_SEED", "9")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert str(cfg) in out
    assert any("gamma" in line and "0.25" in line and f"file {cfg}:1" in line for line in out.splitlines())
    assert any("seed" in line and "9" in line and "env NUDGE_LOCAL_SEED" in line for line in out.splitlines())


@pytest.mark.parametrize(
    "file,flags,policy",
    [
        ("", [], "stop"),  # serve's own default: a client is told its messages do not fit
        ("context_overflow: drop_oldest\n", [], "drop_oldest"),  # the file is not overridden by an unset flag
        ("context_overflow: drop_oldest\n", ["--context-overflow", "stop"], "stop"),
    ],
)
def test_serve_takes_the_context_policy_from_its_flag_else_the_file_else_stop(cfg, file, flags, policy):
    from nudge_local.cli import build_parser
    from nudge_local.server.cli import serve_settings

    cfg.write_text(file)
    args = build_parser().parse_args(["serve", *flags])
    assert serve_settings(args).context_overflow == policy
    assert load_settings().context_overflow == "drop_oldest"  # the setting itself: the chat's default


def test_the_command_line_says_each_engine_note_once(capsys):
    """The engine notes a fallback at every answer; the command line's handler says each note once."""
    import logging

    from nudge_local.commands import say_notes
    from nudge_local.engine.generate import note

    log = logging.getLogger("nudge_local.notes")
    saved = log.handlers[:], log.propagate
    log.handlers.clear()
    try:
        say_notes()
        for message in ("a fallback", "a fallback", "another"):
            note(message)
        assert capsys.readouterr().err == "nudge-local: note: a fallback\nnudge-local: note: another\n"
    finally:
        log.handlers[:], log.propagate = saved


def test_gamma_auto_the_gates_and_their_thresholds(cfg, monkeypatch):
    """gamma takes "auto" (None: calibrated for the pair) from every layer; the entropy gate's
    threshold is in nats and may pass 1, a probability gate's may not; a target outside (0, 1) and an
    unknown gate are one sentence each."""
    assert load_settings({"gamma": "auto"}).gamma is None
    monkeypatch.setenv("NUDGE_LOCAL_GAMMA", "auto")
    assert load_settings().gamma is None and load_settings({"gamma": "0.3"}).gamma == 0.3
    monkeypatch.delenv("NUDGE_LOCAL_GAMMA")
    s = load_settings({"gate": "entropy", "gamma": "2.5", "nudge_target": 0.1})
    assert (s.gate, s.gamma, s.nudge_target) == ("entropy", 2.5, 0.1)
    with pytest.raises(NudgeError, match=r"option --gamma: gamma must be a number from 0 to 1 \(got 2.5\) for the m"):
        load_settings({"gate": "margin", "gamma": "2.5"})
    cfg.write_text("gate: best\n")
    with pytest.raises(NudgeError, match="gate must be one of top1, margin, entropy"):
        load_settings()
    cfg.write_text("nudge_target: 1.2\n")
    with pytest.raises(NudgeError, match="nudge_target must be a share between 0 and 1"):
        load_settings()
