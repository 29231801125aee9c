"""The curated catalog of model pairs (models/catalog.yaml) and model references.

A model reference is a local path, a hub file `org/repo:file.gguf`, or (for a whole pair) a
catalog alias. Hub files live in the standard Hugging Face cache; there is no cache of our own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from nudge_local.errors import NudgeError
from nudge_local.paths import catalog_path

_HUB_REF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+):(?P<file>[^:]+\.gguf)(?:@(?P<rev>[\w.-]+))?$")
PAIR_KEYS = ("description", "base", "nudger", "license", "gamma", "base_format", "vocabulary", "notes")
FILE_KEYS = ("repo", "file", "size")


@dataclass(frozen=True)
class HubFile:
    repo: str
    file: str
    revision: str | None = None
    size: int | None = None  # bytes, where the catalog knows it

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.file}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class Pair:
    alias: str
    description: str
    base: HubFile
    nudger: HubFile
    license: dict
    gamma: float
    base_format: str
    vocabulary: str
    notes: str


@dataclass(frozen=True)
class Catalog:
    default: str
    pairs: dict[str, Pair]
    path: Path

    def pair(self, alias: str) -> Pair:
        if alias not in self.pairs:
            raise NudgeError(f"There is no pair {alias!r} in the catalog; `nudge-local models` lists them.")
        return self.pairs[alias]


def parse_ref(text: str) -> HubFile | Path:
    """`org/repo:file.gguf[@revision]` is a hub file; anything else is a local path."""
    m = _HUB_REF.match(text.strip())
    if m and not Path(text).expanduser().exists():
        return HubFile(m["repo"], m["file"], m["rev"])
    return Path(text).expanduser()


def _file(alias: str, role: str, raw, path: Path) -> HubFile:
    if not isinstance(raw, dict) or set(raw) != set(FILE_KEYS):
        raise NudgeError(f"{path}: pair {alias!r} {role} must have exactly the keys {', '.join(FILE_KEYS)}.")
    if not (isinstance(raw["repo"], str) and raw["repo"].count("/") == 1 and str(raw["file"]).endswith(".gguf")):
        raise NudgeError(f"{path}: pair {alias!r} {role} needs repo ORG/NAME and a .gguf file.")
    if not isinstance(raw["size"], int) or raw["size"] <= 0:
        raise NudgeError(f"{path}: pair {alias!r} {role} size must be a positive number of bytes.")
    return HubFile(raw["repo"], raw["file"], None, raw["size"])


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and check the catalog; every entry must have exactly the schema's keys."""
    path = path or catalog_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise NudgeError(f"The catalog {path} cannot be read ({e.strerror}).") from None
    except yaml.YAMLError as e:
        raise NudgeError(f"The catalog {path} is not valid YAML ({e}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), dict) or "default" not in data:
        raise NudgeError(f"The catalog {path} needs a `default` alias and a `pairs` mapping.")
    pairs = {}
    for alias, raw in data["pairs"].items():
        if not isinstance(raw, dict) or set(raw) != set(PAIR_KEYS):
            raise NudgeError(f"{path}: pair {alias!r} must have exactly the keys {', '.join(PAIR_KEYS)}.")
        gamma = raw["gamma"]
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 1:
            raise NudgeError(f"{path}: pair {alias!r} gamma must be a number from 0 to 1.")
        if raw["vocabulary"] not in ("same", "different"):
            raise NudgeError(f"{path}: pair {alias!r} vocabulary must be `same` or `different`.")
        if not isinstance(raw["license"], dict) or set(raw["license"]) != {"base", "nudger"}:
            raise NudgeError(f"{path}: pair {alias!r} license must name the base's and the nudger's.")
        if "{question}" not in str(raw["base_format"]):
            raise NudgeError(f"{path}: pair {alias!r} base_format needs a {{question}} field.")
        pairs[alias] = Pair(
            alias=alias,
            description=str(raw["description"]),
            base=_file(alias, "base", raw["base"], path),
            nudger=_file(alias, "nudger", raw["nudger"], path),
            license=dict(raw["license"]),
            gamma=float(gamma),
            base_format=str(raw["base_format"]),
            vocabulary=raw["vocabulary"],
            notes=str(raw["notes"]),
        )
    if data["default"] not in pairs:
        raise NudgeError(f"{path}: the default pair {data['default']!r} is not among the pairs.")
    return Catalog(default=data["default"], pairs=pairs, path=path)
