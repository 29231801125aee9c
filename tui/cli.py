"""`nudge-local chat`: its options; the Textual app loads only for this command."""

from __future__ import annotations

import argparse
import sys

from nudge_local.choose import choose_models
from nudge_local.commands import add_pair_options, add_settings_flags, fetch_missing, settings_of
from nudge_local.engine.errors import NudgeError


def add_parser(sub) -> argparse.ArgumentParser:
    chat = sub.add_parser("chat", help="the terminal chat that shows who wrote every token")
    add_pair_options(chat, positional=True)
    add_settings_flags(chat)
    return chat


def main(args: argparse.Namespace) -> int:
    s = settings_of(args)
    try:
        fetch_missing(choose_models(s, "nudged"), args.yes)
    except NudgeError as e:
        print(f"nudge-local: {e}", file=sys.stderr)  # the app shows it again, in place of the models
    from nudge_local.tui.app import NudgeApp  # the engine imports no UI code; only this command loads it

    NudgeApp(s).run()
    return 0
