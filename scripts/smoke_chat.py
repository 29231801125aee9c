"""One answer of the installed chat on a generated pair, headless: the check that an installed
nudge-local (a wheel, not the source tree) has a whole chat: every screen and widget module, the
stylesheet, the engine underneath. tests/test_packaging.py runs it with a fresh environment's python
from outside the repository; run it by path the same way:

    /tmp/fresh/bin/python scripts/smoke_chat.py            # prints the answer, exits 1 if anything is off

The pair is written by nudge_local.bench.synthetic: the base is sure of " the", then split three ways,
so the nudger writes " Sure," and the base ends with " ok." (five tokens, both models).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

EXPECTED = [("the", "base"), (" Sure", "nudge"), (",", "nudge"), (" ok", "base"), (".", "base")]


def write_pair(tmp: Path) -> tuple[Path, Path]:
    from nudge_local.bench.synthetic import CHATML, Table, bpe_vocab, write_model

    v = bpe_vocab(0)
    the, dot, sure, comma, ok = (v.find(p) for p in (b" the", b".", b" Sure", b",", b" ok"))
    base_rows = {the: {dot: 0.0, comma: 0.0, ok: 0.0}, comma: {ok: 6.0}, ok: {dot: 6.0}, dot: {v.eos: 6.0}}
    base = write_model(tmp / "base.gguf", v, Table(rows=base_rows, default={the: 6.0}))
    nudger_rows = {the: {sure: 5.0}, sure: {comma: 5.0}, comma: {ok: 5.0}}
    nudger = write_model(tmp / "nudger.gguf", v, Table(rows=nudger_rows, default={ok: 3.0}), chat_template=CHATML)
    return base, nudger


async def one_answer(app, question: str, timeout: float = 60.0) -> list[tuple[str, str]]:
    from nudge_local.tui.widgets.answer import AnswerView

    async with app.run_test(size=(100, 30)) as pilot:
        end = time.monotonic() + timeout
        while not app.ready:
            if time.monotonic() > end:
                raise SystemExit(f"the models did not load: {app.loading}")
            await pilot.pause(0.05)
        await pilot.press(*question)
        await pilot.press("enter")
        while app.current is not None or not app.query("#chat AnswerView"):
            if time.monotonic() > end:
                raise SystemExit("the answer did not finish")
            await pilot.pause(0.05)
        view = list(app.query("#chat AnswerView").results(AnswerView))[-1]
        return [(t.text, t.source) for t in view.tokens]


def main() -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nudge-smoke-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["NUDGE_LOCAL_CONFIG"] = str(tmp / "no-config.yaml")  # the user's settings are not read
        os.environ["NUDGE_LOCAL_DATA_DIR"] = str(tmp / "data")

        import nudge_local
        from nudge_local.config import load_settings
        from nudge_local.tui.app import NudgeApp
        from nudge_local.tui.history import History

        print(f"nudge_local from {Path(nudge_local.__file__).parent}")
        base, nudger = write_pair(tmp)
        settings = load_settings({"base": str(base), "nudge": str(nudger), "threads": 1})
        app = NudgeApp(settings, history=History(tmp / "history.sqlite3"), export_dir=tmp)
        tokens = asyncio.run(one_answer(app, "Why?"))
    print(f"answer: {''.join(t for t, _ in tokens)!r} {tokens}")
    print(f"{time.perf_counter() - started:.1f} s")
    if tokens != EXPECTED:
        print(f"expected {EXPECTED}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
