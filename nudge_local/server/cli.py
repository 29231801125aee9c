"""`nudge-local serve`: its options, and the pair served (the web stack loads only for this command)."""

from __future__ import annotations

import argparse
import os

from nudge_local.commands import add_pair_options, add_settings_flags, load_pair, settings_of
from nudge_local.config import Settings
from nudge_local.engine.errors import NudgeError


def add_parser(sub) -> argparse.ArgumentParser:
    serve = sub.add_parser("serve", help="serve the pair over the OpenAI HTTP API, with every token's provenance")
    add_pair_options(serve, positional=True)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $NUDGE_LOCAL_API_KEY)")
    serve.add_argument("--queue", type=int, default=32, help="most requests waiting behind the running one (503 after)")
    serve.add_argument("--max-body", type=int, default=4 << 20, help="largest request body in bytes (413 beyond)")
    serve.add_argument("--context-overflow", choices=["stop", "drop_oldest"],
                       help="messages longer than the context: stop (a 400) or drop_oldest (the oldest turns leave; "
                       "a request may ask with its own 'context_overflow' field); default: the setting's value, "
                       "else stop")  # fmt: skip
    serve.add_argument("--log-level", choices=["warning", "info", "debug"], default="warning",
                       help="uvicorn's log; info adds one line per request")  # fmt: skip
    add_settings_flags(serve)
    return serve


def serve_settings(args: argparse.Namespace) -> Settings:
    """The settings under serve's flags. A conversation longer than the context is refused (a 400 the
    client reads) unless --context-overflow, the configuration or the request says drop_oldest: the
    chat's default, dropping the oldest turns, would cut a client's messages without its knowing."""
    s = settings_of(args)
    if s.source("context_overflow") == "default":
        s = s.updated({"context_overflow": "stop"}, "serve", "serve's default")
    return s


def main(args: argparse.Namespace) -> int:
    from nudge_local.server.app import check_address
    from nudge_local.server.app import serve as serve_pair
    from nudge_local.server.worker import Pair

    if not 0 <= args.port <= 65535:
        raise NudgeError(f"option --port must be a whole number from 0 to 65535 (got {args.port}).")
    for flag, value, least in (("--queue", args.queue, 0), ("--max-body", args.max_body, 1)):
        if value < least:
            raise NudgeError(f"option {flag} must be a whole number of at least {least} (got {value}).")
    check_address(args.host, args.port)
    api_key = args.api_key or os.environ.get("NUDGE_LOCAL_API_KEY") or None
    loaded = load_pair(serve_settings(args), "nudged", args.yes)
    models = loaded.models
    name = loaded.choice.pair.alias if loaded.choice.pair else f"{models['base'].label}+{models['nudger'].label}"
    pair = Pair(models, loaded.settings, loaded.chat_template, name)
    return serve_pair(pair, host=args.host, port=args.port, api_key=api_key, queue_size=args.queue,
                      max_body=args.max_body, log_level=args.log_level)  # fmt: skip
