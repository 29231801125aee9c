"""Settings: defaults < the YAML file in the user's config directory < NUDGE_LOCAL_* < flags.

Every value remembers where it came from, so `nudge-local config` can say so, and a bad value is
one sentence naming the file and line (or the variable, or the flag) and the values allowed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from nudge_local.engine.context import POLICIES
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.gates import GATES
from nudge_local.engine.prompts import DEFAULT_BASE_FORMAT, check_base_format, format_stops
from nudge_local.paths import config_path
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
        return (v,)
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        raise ValueError("a text or a list of texts")
    return tuple(v)


def _keymap(v):
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise ValueError("a mapping of binding ids to keys, e.g. {cancel: escape, compare: f4}")
    return MappingProxyType(dict(v))


def _choice(allowed):
    def parse(v):
        if v not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return v

    return parse


def _gamma(v):
    """A threshold of at least 0 (at most 1 but for the entropy gate: check_gamma), or "auto" (None:
    calibrated for the pair)."""
    if v is None or v == "auto":
        return None
    try:
        return _number(float, 0, 100)(float(v) if isinstance(v, str) else v)
    except ValueError:
        raise ValueError('a number from 0 to 1 or "auto"') from None


def _share(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ValueError("a share between 0 and 1, like 0.12")
    return float(v)


def _optional_text(v):
    return None if v is None else _text(v)


def setting(default: Any, parse: Callable[[Any], Any], help: str):  # noqa: A002 - the field's help text
    """One setting: its default, the parser that checks a raw value (from the file, the environment
    or a flag), and the help that `nudge-local config` and the flags show."""
    meta = {"parse": parse, "help": help}
    if isinstance(default, MappingProxyType):  # unhashable: a field needs a factory for it
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Every setting, typed, and where each value came from (`sources`). Immutable: a layer above
    (a catalog pair's defaults, eval's paper set-up) makes a new value with `under`."""

    pair: str | None = setting(None, _optional_text, "default pair: a catalog alias (none: the catalog's default)")
    base: str | None = setting(
        None, _optional_text, "base model reference: a path, org/repo:file.gguf, or a server's URL"
    )
    nudge: str | None = setting(
        None, _optional_text, "nudger model reference: a path, org/repo:file.gguf, or a server's URL"
    )
    base_model: str | None = setting(None, _optional_text, "the base's name on its server, where it serves several")
    nudge_model: str | None = setting(None, _optional_text, "the nudger's name on its server, where it serves several")
    base_api: str = setting(
        "auto", _choice(APIS), "the base server's API: auto (detected), llama-server, openai, ollama"
    )
    nudge_api: str = setting(
        "auto", _choice(APIS), "the nudger server's API: auto (detected), llama-server, openai, ollama"
    )
    timeout: float = setting(60.0, _number(float, 0.1), "seconds a model server may take to answer one request")
    context_overflow: str = setting(
        "drop_oldest", _choice(POLICIES),
        "a conversation longer than the context: drop_oldest (its oldest turns leave) or stop",
    )  # fmt: skip
    gamma: float | None = setting(
        0.4, _gamma, "the gate's threshold: for top1, the nudger writes where the base's top-1 probability is "
        "below it; auto: calibrated to nudge_target for the pair",
    )  # fmt: skip
    gate: str = setting("top1", _choice(GATES), "where the nudger writes: top1 (the paper's), margin or entropy")
    nudge_target: float = setting(
        0.12, _share, "with gamma auto: the share of tokens the nudger should write (the authors' 10-15%)"
    )
    max_tokens: int = setting(256, _number(int, 0), "answer length limit")
    temperature: float = setting(0.0, _number(float, 0), "0 is greedy")
    top_p: float = setting(1.0, _number(float, 0.000001, 1), "nucleus sampling mass")
    seed: int = setting(0, _number(int, 0), "sampling seed")
    word_cap: int = setting(16, _number(int, 1), "most tokens in one nudged word")
    context_size: int | None = setting(
        None, _number(int, 64, auto=True), "tokens per model context (auto: what the pair needs)"
    )
    gpu_layers: int | None = setting(
        None, _number(int, -1, auto=True), "layers offloaded to the GPU (auto: all where possible)"
    )
    threads: int | None = setting(None, _number(int, 1, auto=True), "CPU threads per model (auto: all cores)")
    base_format: str = setting(DEFAULT_BASE_FORMAT, _base_format, "the base's prompt, with {system} and {question}")
    system: str = setting("", _text, "system prompt for both models")
    stop: tuple[str, ...] = setting(
        (), _texts, "stop strings (default: the base format's next-turn and answer markers; [] for none)"
    )
    chat_template: str | None = setting(None, _optional_text, "Jinja chat template file for the nudger")
    keymap: Mapping[str, str] = setting(
        MappingProxyType({}), _keymap, "chat key bindings by id, e.g. {compare: f4}"
    )
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(dict.fromkeys(FIELDS, "default")))

    def as_dict(self) -> dict[str, Any]:
        """Every setting's value by name, as plain YAML types (a list of stop strings, a dict of keys)."""
        plain = {list: list, tuple: list, MappingProxyType: dict}
        return {name: plain.get(type(v), lambda x: x)(v) for name, v in ((n, getattr(self, n)) for n in FIELDS)}

    def source(self, name: str) -> str:
        """Where the value of `name` came from: "default", "file PATH:LINE", "env VAR", "flag --NAME", ..."""
        return self.sources.get(name, "default")

    @property
    def stop_strings(self) -> list[str]:
        """The stop strings in force: the `stop` setting where one was given (`[]`: none), else
        the base format's own labels (its next-turn and answer markers), so an answer ends where
        the base would start the next "Question:" or another "Answer:" itself."""
        if self.source("stop") != "default":
            return list(self.stop)
        return format_stops(self.base_format)

    @property
    def stop_source(self) -> str:
        if self.source("stop") != "default":
            return self.source("stop")
        return f"the next-turn and answer markers of base_format ({self.source('base_format')})"

    def under(self, values: Mapping[str, Any], source: str) -> Settings:
        """These settings with `values` (checked) filling those still at their defaults: a layer below
        what the user set, such as a catalog pair's gamma. Values of None are passed over."""
        return self.updated({k: v for k, v in values.items() if v is not None and self.source(k) == "default"},
                            source, source)  # fmt: skip

    def updated(self, raw: Mapping[str, Any], where: str, source: str) -> Settings:
        """These settings with each value in `raw` parsed and set, from `source` (named `where` in
        an error: a file and line, a variable, a flag)."""
        if not raw:
            return self
        values, sources = {}, dict(self.sources)
        for name, value in raw.items():
            values[name] = parse_setting(name, value, where)
            sources[name] = source
        return replace(self, **values, sources=MappingProxyType(sources))


SETTINGS = {f.name: f for f in fields(Settings) if f.metadata}
# name: (parser, default, help), in the order `nudge-local config` lists them
FIELDS: dict[str, tuple[Any, Any, str]] = {
    name: (f.metadata["parse"], f.default if f.default is not MISSING else f.default_factory(), f.metadata["help"])
    for name, f in SETTINGS.items()
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


def parse_setting(name: str, raw: Any, where: str) -> Any:
    """A raw value checked by its setting's parser; a bad one is one sentence naming `where`."""
    try:
        return FIELDS[name][0](raw)
    except ValueError as e:
        raise NudgeError(f"{where}: {name} must be {e} (got {raw!r}).") from None


def _read_file(s: Settings, path: Path) -> Settings:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return s
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
        return s
    if not isinstance(data, dict):
        raise NudgeError(f"{path}: the configuration must be a mapping of settings (key: value).")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    for key, raw in data.items():
        where = f"{path}:{lines.get(key, '?')}"
        if key not in FIELDS:
            raise NudgeError(f"{where}: unknown setting {key!r}; the settings are {', '.join(FIELDS)}.")
        s = s.updated({key: raw}, where, f"file {path}:{lines.get(key, '?')}")
    return s


def _read_env(s: Settings) -> Settings:
    for key in FIELDS:
        var = f"NUDGE_LOCAL_{key.upper()}"
        if var in os.environ:
            raw = os.environ[var]
            if key not in TEXT_FIELDS:
                try:
                    raw = yaml.safe_load(raw) if raw.strip() else None
                except yaml.YAMLError:
                    pass  # the field's parser names what is allowed
            s = s.updated({key: raw}, f"environment variable {var}", f"env {var}")
    return s


def load_settings(flags: dict[str, Any] | None = None) -> Settings:
    """Defaults, then the file, then the environment, then the flags that were given (not None)."""
    s = _read_env(_read_file(Settings(), config_path()))
    for key, raw in (flags or {}).items():
        if raw is not None and key in FIELDS:
            s = s.updated({key: raw}, f"option --{key.replace('_', '-')}", f"flag --{key.replace('_', '-')}")
    check_gamma(s)
    return s


def where(source: str) -> str:
    """A setting's source as an error names it: a file and line, a variable, an option."""
    kind, _, rest = source.partition(" ")
    return {"file": rest, "env": f"environment variable {rest}", "flag": f"option {rest}"}.get(kind, source)


def check_gamma(s: Settings) -> None:
    """A probability gate's threshold is at most 1; the entropy gate's is in nats and may be larger."""
    if s.gamma is not None and s.gamma > 1 and s.gate != "entropy":
        raise NudgeError(
            f"{where(s.source('gamma'))}: gamma must be a number from 0 to 1 (got {s.gamma:g}) for the {s.gate} gate; "
            f"the entropy gate's gamma is in nats and may be larger."
        )
