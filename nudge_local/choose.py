"""Which model files a command runs: explicit references, or a catalog pair; fetching what is missing."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nudge_local.catalog import Catalog, HubFile, ModelFile, PackageFile, Pair, is_url, load_catalog, parse_ref
from nudge_local.config import Settings
from nudge_local.engine.devices import gpu_layers, plan_context
from nudge_local.engine.errors import NudgeError
from nudge_local.engine.gguf_check import check_gguf
from nudge_local.engine.interface import ScoringModel
from nudge_local.engine.local import Model
from nudge_local.hub import cached_path, download, hub_unreachable, human_size, not_cached_error, offline, remote_size
from nudge_local.packaged import installed, not_installed_error, package_path
from nudge_local.paths import cache_dir
from nudge_local.remote.connect import connect
from nudge_local.remote.http import Endpoint


@dataclass(frozen=True)
class Choice:
    """The models a run needs, each a local path or a hub file, and the catalog pair if one was named."""

    base: Path | ModelFile | str | None
    nudger: Path | ModelFile | str | None
    pair: Pair | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """The catalog pair's gamma, base format, stop strings and context size (those it sets)."""
        if self.pair is None:
            return {}
        p = self.pair
        chosen = {"gamma": p.gamma, "base_format": p.base_format, "stop": p.stop, "context_size": p.context_size}
        return {k: v for k, v in chosen.items() if v is not None}

    def settle(self, s: Settings) -> Settings:
        """The settings a run uses: `s`, with the pair's defaults wherever the user set nothing."""
        return s.under(self.defaults, f"pair {self.pair.alias}") if self.pair else s


def choose_models(s: Settings, mode: str) -> Choice:
    """--base/--nudge (or their settings) win; otherwise the pair setting, else the catalog's default.
    A catalog pair's gamma and base format apply unless the user set them: `Choice.settle`."""
    need_base, need_nudge = mode in ("nudged", "base", "paper"), mode in ("nudged", "nudger", "paper")
    explicit = {"base": s.base, "nudge": s.nudge}
    if any(explicit.values()):
        for flag, needed in (("base", need_base), ("nudge", need_nudge)):
            if needed and not explicit[flag]:
                raise NudgeError(f"Mode {mode} needs a {flag} model too: give --{flag} PATH or org/repo:file.gguf.")
        return Choice(
            _ref(s.base) if need_base else None,
            _ref(s.nudge) if need_nudge else None,
        )
    pair = default_pair(load_catalog(), s.pair)
    return Choice(pair.base if need_base else None, pair.nudger if need_nudge else None, pair)


def present(f: ModelFile) -> bool:
    """Whether a catalog file can be loaded without a download (hub: cached; package: installed)."""
    return installed(f) if isinstance(f, PackageFile) else cached_path(f) is not None


def default_pair(catalog: Catalog, configured: str | None) -> Pair:
    """The pair a command runs when none is named on it: the configured pair; else the catalog's
    default where its files are present; else the fallback (`tiny`) where its packages are installed,
    said in one note naming how to get the default; else the default, to be downloaded."""
    if configured:
        return catalog.pair(configured)
    default = catalog.pair(catalog.default)
    if all(present(f) for f in default.files) or not catalog.fallback:
        return default
    fallback = catalog.pair(catalog.fallback)
    if not all(present(f) for f in fallback.files):
        return default
    size = human_size(sum(f.size or 0 for f in default.files))
    logging.getLogger("nudge_local.notes").warning(
        f"using the {fallback.alias} pair ({fallback.description.split(';')[0]}); the recommended pair is "
        f"{default.alias}: `nudge-local pull {default.alias}` downloads it ({size})."
    )
    return fallback


def _ref(ref: str) -> Path | HubFile | str:
    """A server's URL stays text; anything else is a file reference."""
    return ref if is_url(ref) else parse_ref(ref)


def endpoint(s: Settings, role: str, url: str) -> Endpoint:
    """Where the `role` model is served: the URL and the settings for it; its API key from
    $NUDGE_LOCAL_BASE_API_KEY or $NUDGE_LOCAL_NUDGE_API_KEY (never a flag: flags show in `ps`)."""
    flag = "base" if role == "base" else "nudge"
    key = os.environ.get(f"NUDGE_LOCAL_{flag.upper()}_API_KEY") or None
    return Endpoint(url, getattr(s, f"{flag}_model"), getattr(s, f"{flag}_api"), key, s.timeout)


def missing(files: list[Path | ModelFile | str | None], pair: str | None = None) -> list[HubFile]:
    """The hub files to download; a package file whose package is not installed is one sentence
    naming the pip command (nothing can be downloaded for it)."""
    for f in files:
        if isinstance(f, PackageFile) and not installed(f):
            raise not_installed_error(f, pair)
    return [f for f in files if isinstance(f, HubFile) and cached_path(f) is None]


def fetch(
    files: list[HubFile],
    *,
    yes: bool,
    what: str = "",
    out=None,
    confirm: Callable[[str], bool] | None = None,
    pair: str | None = None,
) -> None:
    """Say what will be downloaded and how large, ask `confirm` (unless `yes`), then download into
    the Hugging Face cache. Offline (or with the hub out of reach), or with no one to ask (`confirm`
    None), it is one sentence instead, naming the pull of `pair` where the files are a pair's. The
    library never reads the terminal itself: the command line passes `confirm`."""
    if not files:
        return
    out = out or sys.stderr
    if offline():
        raise not_cached_error(files[0], pair)
    if hub_unreachable():
        raise not_cached_error(files[0], pair, unreachable=True)
    sizes = [remote_size(f) for f in files]
    total = sum(x for x in sizes if x)
    lines = [f"  {f.ref}  ({human_size(n)})" for f, n in zip(files, sizes, strict=True)]
    print(f"{what}nudge-local will download {human_size(total)} into {cache_dir()}:", *lines, sep="\n", file=out)
    if not yes:
        if confirm is None:
            raise NudgeError("Downloads need confirmation: add --yes, or fetch them first with `nudge-local pull`.")
        if not confirm("Download now? [y/N] "):
            raise NudgeError("Nothing was downloaded; `nudge-local pull` fetches the files when you want them.")
    for f in files:
        download(f)


def local_path(ref: Path | ModelFile | str | None) -> Path | str | None:
    """The file on disk for a reference (after `fetch`; a package's file assembled where needed);
    a server's URL as it is."""
    if ref is None or isinstance(ref, (Path, str)):
        return ref
    if isinstance(ref, PackageFile):
        return package_path(ref)
    p = cached_path(ref)
    if p is None:
        raise not_cached_error(ref)
    return p


def read_chat_template(s: Settings) -> str | None:
    """The configured chat template file's text (None: use the nudger's GGUF)."""
    if s.chat_template is None:
        return None
    try:
        return Path(s.chat_template).expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise NudgeError(f"The chat template {s.chat_template} cannot be read ({e.strerror}).") from None


def load_models(
    paths: dict[str, Path | None], s: Settings, progress: Callable[[str, float], None] | None = None
) -> dict[str, ScoringModel]:
    """Check the files, size the context to memory and load each model given (closing what was
    loaded if one fails); connect to each one given as a server's URL. Shared by the command line,
    the chat and the server."""
    given = {role: p for role, p in paths.items() if p is not None and not is_url(p)}
    for role, path in given.items():
        check_gguf(path, role=role)  # before plan_context reads their headers
    n_ctx = plan_context(list(given.values()), s.context_size) if given else 0
    models: dict[str, ScoringModel] = {}
    try:
        for role, url in paths.items():
            if is_url(url):
                models[role] = connect(endpoint(s, role, url), role)
        for role, path in given.items():
            models[role] = Model(
                path,
                role=role,
                n_ctx=n_ctx,
                n_threads=s.threads,
                n_gpu_layers=gpu_layers(s.gpu_layers),
                progress=(lambda f, role=role: progress(role, f)) if progress else None,
            )
    except BaseException:
        for m in models.values():
            m.close()
        raise
    return models
