"""The curated catalog of model pairs (models/catalog.yaml) and model references.

A model reference is a local path, a hub file `org/repo:file.gguf`, or (for a whole pair) a
catalog alias. A catalog file comes from one of two sources: the Hugging Face hub (`HubFile`, kept in
the standard Hugging Face cache) or an installed Python distribution (`PackageFile`, the `tiny`
pair's; nudge_local/packaged.py finds them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from nudge_local.engine.errors import NudgeError
from nudge_local.paths import catalog_path

_HUB_REF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+):(?P<file>[^:]+\.gguf)(?:@(?P<rev>[\w.-]+))?$")
PAIR_KEYS = ("description", "base", "nudger", "license", "gamma", "base_format", "vocabulary", "notes")
OPTIONAL_PAIR_KEYS = ("stop", "context_size")  # defaults a pair may set beside gamma and base_format
FILE_KEYS = ("repo", "file", "size")
PACKAGE_KEYS = ("package", "extra", "file", "size")  # and `assemble`, where a module writes the file


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
class PackageFile:
    """A model file that an installed Python distribution provides: either a file inside it
    (`file` is its path there), or one its module `assemble` writes (`assemble(path)`; `file` is
    then the name it gets in nudge-local's cache). `extra` is nudge-local's extra that installs it."""

    package: str
    extra: str
    file: str
    size: int
    assemble: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.package}:{self.file}"


ModelFile = HubFile | PackageFile


@dataclass(frozen=True)
class Pair:
    alias: str
    description: str
    base: ModelFile
    nudger: ModelFile
    license: dict
    gamma: float
    base_format: str
    vocabulary: str
    notes: str
    stop: tuple[str, ...] | None = None  # None: the settings' default stops
    context_size: int | None = None  # None: what the settings plan

    @property
    def files(self) -> tuple[ModelFile, ModelFile]:
        return self.base, self.nudger


@dataclass(frozen=True)
class Catalog:
    default: str
    pairs: dict[str, Pair]
    path: Path
    fallback: str | None = None  # the pair used where the default's files are absent (if installed)

    def pair(self, alias: str) -> Pair:
        if alias not in self.pairs:
            raise NudgeError(f"There is no pair {alias!r} in the catalog; `nudge-local models` lists them.")
        return self.pairs[alias]


def is_url(ref: object) -> bool:
    """Whether a model reference names a server (http:// or https://) rather than a file."""
    return isinstance(ref, str) and ref.startswith(("http://", "https://"))


def parse_ref(text: str) -> HubFile | Path:
    """`org/repo:file.gguf[@revision]` is a hub file; anything else is a local path."""
    m = _HUB_REF.match(text.strip())
    if m and not Path(text).expanduser().exists():
        return HubFile(m["repo"], m["file"], m["rev"])
    return Path(text).expanduser()


def _file(alias: str, role: str, raw, path: Path) -> ModelFile:
    if isinstance(raw, dict) and "package" in raw:
        return _package_file(alias, role, raw, path)
    if not isinstance(raw, dict) or set(raw) != set(FILE_KEYS):
        raise NudgeError(
            f"{path}: pair {alias!r} {role} must have exactly the keys {', '.join(FILE_KEYS)} "
            f"(a hub file) or {', '.join(PACKAGE_KEYS)}[, assemble] (a file from a Python package)."
        )
    if not (isinstance(raw["repo"], str) and raw["repo"].count("/") == 1 and str(raw["file"]).endswith(".gguf")):
        raise NudgeError(f"{path}: pair {alias!r} {role} needs repo ORG/NAME and a .gguf file.")
    if not isinstance(raw["size"], int) or raw["size"] <= 0:
        raise NudgeError(f"{path}: pair {alias!r} {role} size must be a positive number of bytes.")
    return HubFile(raw["repo"], raw["file"], None, raw["size"])


def _package_file(alias: str, role: str, raw: dict, path: Path) -> PackageFile:
    keys = set(raw) - {"assemble"}
    if keys != set(PACKAGE_KEYS) or not all(isinstance(raw[k], str) for k in ("package", "extra", "file")):
        raise NudgeError(
            f"{path}: pair {alias!r} {role} from a package must have the keys {', '.join(PACKAGE_KEYS)} "
            "(texts, but size) and optionally assemble."
        )
    if not raw["file"].endswith(".gguf") or not isinstance(raw["size"], int) or raw["size"] <= 0:
        raise NudgeError(f"{path}: pair {alias!r} {role} needs a .gguf file and a positive size in bytes.")
    assemble = raw.get("assemble")
    if assemble is not None and not isinstance(assemble, str):
        raise NudgeError(f"{path}: pair {alias!r} {role} assemble must name a module.")
    return PackageFile(raw["package"], raw["extra"], raw["file"], raw["size"], assemble)


def _optional(alias: str, raw: dict, path: Path) -> dict:
    """A pair's optional defaults, checked: `stop` a list of texts, `context_size` a token count."""
    out = {}
    if "stop" in raw:
        stop = raw["stop"]
        if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
            raise NudgeError(f"{path}: pair {alias!r} stop must be a list of texts.")
        out["stop"] = tuple(stop)
    if "context_size" in raw:
        n = raw["context_size"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 256:
            raise NudgeError(f"{path}: pair {alias!r} context_size must be a whole number of at least 256.")
        out["context_size"] = n
    return out


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
        if not isinstance(raw, dict) or not set(PAIR_KEYS) <= set(raw) <= set(PAIR_KEYS + OPTIONAL_PAIR_KEYS):
            raise NudgeError(
                f"{path}: pair {alias!r} must have exactly the keys {', '.join(PAIR_KEYS)}"
                f" (and optionally {', '.join(OPTIONAL_PAIR_KEYS)})."
            )
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
            **_optional(alias, raw, path),
        )
    for key in ("default", "fallback"):
        if key in data and data[key] not in pairs:
            raise NudgeError(f"{path}: the {key} pair {data[key]!r} is not among the pairs.")
    return Catalog(default=data["default"], pairs=pairs, path=path, fallback=data.get("fallback"))
