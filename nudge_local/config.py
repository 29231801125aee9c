"""Settings: defaults < the YAML file in the user's config directory < NUDGE_LOCAL_* < flags.

Every value remembers where it came from, so `nudge-local config` can say so, and a bad value is
one sentence naming the file and line (or the variable, or the flag) and the values allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nudge_local.context import POLICIES
from nudge_local.errors import NudgeError
from nudge_local.paths import config_path
from nudge_local.prompts import DEFAULT_BASE_FORMAT, check_base_format, format_stops
from nudge_local.remote import APIS


def _number(kind, lo=None, hi=None, auto=False):
    """A parser for an int/float within [lo, hi], optionally also the word "auto" (stored as None)."""
    span = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
    allowed = f"{'a whole number' if kind is int else 'a number'} {span}" + (' or "auto"' if auto else "")

    def parse(v):
        if auto and (v is None or v == "auto"):
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(allowed)
        if kind is int and not float(v).is_integer():
            raise ValueError(allowed)
        v = kind(v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError(allowed)
        return v

    parse.allowed = allowed
    return parse


def _text(v):
    if not isinstance(v, str):
        raise ValueError("a text")
    return v


def _base_format(v):
    _text(v)
    try:
        check_base_format(v)
    except NudgeError:
        raise ValueError("a text with a {question} field and no fields but {system} and {question}") from None
    return v


def _texts(v):
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError("a text or a list of texts")
    return v


def _keymap(v):
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise ValueError("a mapping of binding ids to keys, e.g. {cancel: escape, compare: f4}")
    return v


def _choice(allowed):
    def parse(v):
        if v not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return v

    return parse


def _optional_text(v):
    return None if v is None else _text(v)


# name: (parser, default, help)
FIELDS: dict[str, tuple[Any, Any, str]] = {
    "pair": (_optional_text, None, "default pair: a catalog alias (none: the catalog's default)"),
    "base": (_optional_text, None, "base model reference: a path, org/repo:file.gguf, or a server's URL"),
    "nudge": (_optional_text, None, "nudger model reference: a path, org/repo:file.gguf, or a server's URL"),
    "base_model": (_optional_text, None, "the base's name on its server, where it serves several"),
    "nudge_model": (_optional_text, None, "the nudger's name on its server, where it serves several"),
    "base_api": (_choice(APIS), "auto", "the base server's API: auto (detected), llama-server, openai, ollama"),
    "nudge_api": (_choice(APIS), "auto", "the nudger server's API: auto (detected), llama-server, openai, ollama"),
    "timeout": (_number(float, 0.1), 60.0, "seconds a model server may take to answer one request"),
    "context_overflow": (_choice(POLICIES), "drop_oldest",
                         "a conversation longer than the context: drop_oldest (its oldest turns leave) or stop"),
    "gamma": (_number(float, 0, 1), 0.4, "the nudger writes where the base's top-1 probability is below this"),
    "max_tokens": (_number(int, 0), 256, "answer length limit"),
    "temperature": (_number(float, 0), 0.0, "0 is greedy"),
    "top_p": (_number(float, 0.000001, 1), 1.0, "nucleus sampling mass"),
    "seed": (_number(int, 0), 0, "sampling seed"),
    "word_cap": (_number(int, 1), 16, "most tokens in one nudged word"),
    "context_size": (_number(int, 64, auto=True), None, "tokens per model context (auto: what the pair needs)"),
    "gpu_layers": (_number(int, -1, auto=True), None, "layers offloaded to the GPU (auto: all where possible)"),
    "threads": (_number(int, 1, auto=True), None, "CPU threads per model (auto: all cores)"),
    "base_format": (_base_format, DEFAULT_BASE_FORMAT, "the base's prompt, with {system} and {question}"),
    "system": (_text, "", "system prompt for both models"),
    "stop": (_texts, [], "stop strings (default: the base format's next-turn and answer markers; [] for none)"),
    "chat_template": (_optional_text, None, "Jinja chat template file for the nudger"),
    "keymap": (_keymap, {}, "chat key bindings by id, e.g. {compare: f4}"),
}
TEXT_FIELDS = {
    "pair",
    "base",
    "nudge",
    "base_format",
    "system",
    "chat_template",
    "base_model",
    "nudge_model",
    "base_api",
    "nudge_api",
    "context_overflow",
}


@dataclass
class Settings:
    values: dict[str, Any] = field(default_factory=lambda: {k: v[1] for k, v in FIELDS.items()})
    sources: dict[str, str] = field(default_factory=lambda: dict.fromkeys(FIELDS, "default"))

    @property
    def stop_strings(self) -> list[str]:
        """The stop strings in force: the `stop` setting where one was given (`[]`: none), else
        the base format's own labels (its next-turn and answer markers), so an answer ends where
        the base would start the next "Question:" or another "Answer:" itself."""
        if self.sources["stop"] != "default":
            return list(self.values["stop"])
        return format_stops(self.values["base_format"])

    @property
    def stop_source(self) -> str:
        if self.sources["stop"] != "default":
            return self.sources["stop"]
        return f"the next-turn and answer markers of base_format ({self.sources['base_format']})"

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def set(self, name: str, raw: Any, where: str, source: str) -> None:
        parser = FIELDS[name][0]
        try:
            self.values[name] = parser(raw)
        except ValueError as e:
            raise NudgeError(f"{where}: {name} must be {e} (got {raw!r}).") from None
        self.sources[name] = source


def _read_file(s: Settings, path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except OSError as e:
        raise NudgeError(f"The configuration file {path} cannot be read ({e.strerror}).") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise NudgeError(f"{path}{line}: YAML syntax error ({problem}); fix or delete the file.") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise NudgeError(f"{path}: the configuration must be a mapping of settings (key: value).")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    for key, raw in data.items():
        where = f"{path}:{lines.get(key, '?')}"
        if key not in FIELDS:
            raise NudgeError(f"{where}: unknown setting {key!r}; the settings are {', '.join(FIELDS)}.")
        s.set(key, raw, where, f"file {path}:{lines.get(key, '?')}")


def _read_env(s: Settings) -> None:
    for key in FIELDS:
        var = f"NUDGE_LOCAL_{key.upper()}"
        if var in os.environ:
            raw = os.environ[var]
            if key not in TEXT_FIELDS:
                try:
                    raw = yaml.safe_load(raw) if raw.strip() else None
                except yaml.YAMLError:
                    pass  # the field's parser names what is allowed
            s.set(key, raw, f"environment variable {var}", f"env {var}")


def load_settings(flags: dict[str, Any] | None = None) -> Settings:
    """Defaults, then the file, then the environment, then the flags that were given (not None)."""
    s = Settings()
    _read_file(s, config_path())
    _read_env(s)
    for key, raw in (flags or {}).items():
        if raw is not None and key in FIELDS:
            s.set(key, raw, f"option --{key.replace('_', '-')}", f"flag --{key.replace('_', '-')}")
    return s
