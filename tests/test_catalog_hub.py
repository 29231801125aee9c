"""The catalog, model references, the Hugging Face cache (a real layout built here), first run,
pull/models/doctor, and sizing the context to memory."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nudge_local.bench.synthetic import CHATML, Table, write_model
from nudge_local.catalog import HubFile, PackageFile, load_catalog, parse_ref
from nudge_local.engine.devices import backend, plan_context
from nudge_local.engine.errors import NudgeError
from pairs import vocab

REV = "0123456789abcdef0123456789abcdef01234567"


def test_catalog_schema():
    c = load_catalog()
    assert len(c.pairs) >= 5 and c.default in c.pairs
    assert any(p.vocabulary == "different" for p in c.pairs.values())  # a cross-family pair
    assert any(p.base.size + p.nudger.size < 2.5e9 for p in c.pairs.values())  # fits an 8 GB laptop
    assert c.fallback == "tiny" and all(isinstance(f, PackageFile) for f in c.pair("tiny").files)
    for p in c.pairs.values():
        for f in (p.base, p.nudger):
            assert f.file.endswith(".gguf") and f.size > 5e7
            assert isinstance(f, PackageFile) or f.repo.count("/") == 1
        assert 0 < p.gamma < 1 and "{question}" in p.base_format and p.description and p.notes
        assert p.base.size > p.nudger.size  # the nudger is the small one


@pytest.mark.parametrize(
    "change,phrase",
    [
        (lambda d: d["pairs"]["a"].pop("notes"), "exactly the keys"),
        (lambda d: d["pairs"]["a"].update(gamma=2), "gamma must be"),
        (lambda d: d["pairs"]["a"]["base"].update(size="big"), "size must be"),
        (lambda d: d["pairs"]["a"].update(vocabulary="maybe"), "vocabulary must be"),
        (lambda d: d.update(default="nope"), "default pair 'nope'"),
    ],
)
def test_bad_catalog_entries(tmp_path, change, phrase):
    d = _catalog_dict("org/base-GGUF", "org/nudger-GGUF")
    change(d)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(NudgeError, match=phrase):
        load_catalog(path)


def test_parse_ref(tmp_path):
    assert parse_ref("bartowski/Llama-3.2-1B-Instruct-GGUF:Llama-3.2-1B-Instruct-Q4_K_M.gguf") == HubFile(
        "bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
    )
    assert parse_ref("org/r:f.gguf@v1.0").revision == "v1.0"
    assert parse_ref("models/x.gguf") == Path("models/x.gguf")
    assert parse_ref("~/x.gguf") == Path.home() / "x.gguf"


def _catalog_dict(base_repo, nudger_repo):
    return {
        "default": "a",
        "pairs": {
            "a": {
                "description": "test pair",
                "base": {"repo": base_repo, "file": "base.gguf", "size": 123456},
                "nudger": {"repo": nudger_repo, "file": "nudger.gguf", "size": 12345},
                "license": {"base": "mit", "nudger": "mit"},
                "gamma": 0.4,
                "base_format": "{system}\nQuestion: {question}\nAnswer:",
                "vocabulary": "same",
                "notes": "generated",
            }
        },
    }


def _put_in_hub_cache(cache: Path, repo: str, name: str, src: Path) -> Path:
    """The Hugging Face cache layout: blobs/SHA, snapshots/REV/FILE -> blob, refs/main = REV."""
    root = cache / ("models--" + repo.replace("/", "--"))
    data = src.read_bytes()
    blob = root / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    snap = root / "snapshots" / REV / name
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(REV)
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub cache holding a generated pair, a catalog naming it, and a second, absent pair."""
    tmp = tmp_path_factory.mktemp("hub")
    v = vocab("bpe0")
    the, dot, eos = v.find(b" the"), v.find(b"."), v.eos
    base = write_model(tmp / "base.gguf", v, Table(rows={the: {dot: 6.0}, dot: {eos: 6.0}}, default={the: 6.0}))
    nudger = write_model(tmp / "nudger.gguf", v, Table(default={the: 3.0}), chat_template=CHATML)
    cache = tmp / "cache"
    _put_in_hub_cache(cache, "test-org/base-GGUF", "base.gguf", base)
    _put_in_hub_cache(cache, "test-org/nudger-GGUF", "nudger.gguf", nudger)
    d = _catalog_dict("test-org/base-GGUF", "test-org/nudger-GGUF")
    absent = json.loads(json.dumps(d["pairs"]["a"]))
    absent["base"]["repo"], absent["nudger"]["repo"] = "test-org/absent-GGUF", "test-org/absent2-GGUF"
    d["pairs"]["absent"] = absent
    catalog = tmp / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(d))
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", NUDGE_LOCAL_CATALOG=str(catalog))
    return {"env": env, "cache": cache}


@pytest.fixture(scope="module")
def reachable_hub():
    """A web server on loopback standing for the hub's address (HF_ENDPOINT): it answers, so the
    hub counts as reachable, and nothing is downloaded from it in these tests."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def cli(env, *args, stdin=subprocess.DEVNULL):
    return subprocess.run(
        [sys.executable, "-m", "nudge_local.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=stdin,
        timeout=120,
    )


def test_run_by_hub_reference_offline(hub):
    r = cli(
        hub["env"], "run", "Q", "--base", "test-org/base-GGUF:base.gguf", "--nudge", "test-org/nudger-GGUF:nudger.gguf",
        "--json", "--threads", "1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["text"] == "the."


@pytest.mark.parametrize("args", [["--pair", "a"], []], ids=["alias", "default pair"])
def test_run_by_catalog_alias_offline(hub, args):
    r = cli(hub["env"], "run", "Q", *args, "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == "the." and out["stop_reason"] == "eos"


def _one_sentence(r, *phrases):
    assert r.returncode == 2, (r.returncode, r.stderr)
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    for p in phrases:
        assert p in last, last


def test_offline_and_not_cached_names_pull_and_the_file(hub):
    r = cli(hub["env"], "run", "Q", "--pair", "absent")
    _one_sentence(r, "nudge-local pull", "test-org/absent-GGUF:base.gguf", "offline")
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli(
        hub["env"], "run", "Q", "--base", "test-org/nope-GGUF:x.gguf", "--nudge", "test-org/nudger-GGUF:nudger.gguf"
    )
    _one_sentence(r, "nudge-local pull test-org/nope-GGUF:x.gguf")
    r = cli(hub["env"], "pull", "absent")
    _one_sentence(r, "nudge-local pull", "test-org/absent-GGUF:base.gguf")
    r = cli(hub["env"], "pull", "test-org/nope-GGUF:x.gguf")
    _one_sentence(r, "test-org/nope-GGUF:x.gguf", "offline")


def test_pull_of_cached_files_says_where_they_are(hub):
    r = cli(hub["env"], "pull", "a")
    assert r.returncode == 0, r.stderr
    assert "already in the cache" in r.stderr and str(hub["cache"]) in r.stderr


def test_first_run_without_confirmation_says_what_and_how_large(hub, reachable_hub):
    env = dict(hub["env"], HF_ENDPOINT=reachable_hub)
    env.pop("HF_HUB_OFFLINE")
    r = cli(env, "run", "Q", "--pair", "absent")
    _one_sentence(r, "--yes", "nudge-local pull")
    assert "will download 135.8 KB" in r.stderr and "test-org/absent-GGUF:base.gguf  (123.5 KB)" in r.stderr


def test_models_and_doctor_report(hub):
    r = cli(hub["env"], "models")
    assert r.returncode == 0, r.stderr
    present = [line for line in r.stdout.splitlines() if "present:" in line]
    assert len(present) == 2 and all(str(hub["cache"]) in line for line in present)
    assert r.stdout.count("not downloaded") == 2 and "a  (default)" in r.stdout
    r = cli(hub["env"], "doctor")
    assert r.returncode == 0, r.stderr
    # this build's own backend: CPU here, Metal on an Apple Silicon build, CUDA where built with it
    assert "llama-cpp-python 0.3.36" in r.stdout and f"backend: {backend()}" in r.stdout
    assert str(hub["cache"]) in r.stdout and "offline" in r.stdout and "gamma" in r.stdout


GB = 10**9


def test_context_is_sized_to_memory(tmp_path):
    path = write_model(tmp_path / "m.gguf", vocab("bpe0"), Table(default={1: 1.0}), layers=2)
    kv_per_token = 2 * 1 * (32 + 32) * 2  # layers x kv heads x (key + value) x f16
    assert plan_context([path], memory=(8 * GB, 16 * GB)) == 4096
    assert plan_context([path], 1000, memory=(8 * GB, 16 * GB)) == 1000  # asked for: no cap
    little = 2**29 + 1000 * kv_per_token  # headroom + room for 1000 tokens
    assert plan_context([path], memory=(little, 16 * GB)) == 768
    with pytest.raises(NudgeError, match="too little for the models' context"):
        plan_context([path], memory=(2**29, 16 * GB))
    with pytest.raises(NudgeError, match="choose a smaller pair"):
        plan_context([path], memory=(1000, 2**29))
