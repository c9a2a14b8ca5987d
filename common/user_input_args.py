"""The user-input flags of the tools that take users (retrieval.recall, serving.client): one set of
names, help texts and defaults, so the two tools read the same command line the same way."""
from __future__ import annotations

import argparse

DEFAULT_LIMIT = 3


def add_user_input_args(parser: argparse.ArgumentParser) -> None:
    """--features | --log-line | --log-file (one required), and --limit for --log-file."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="JSON object of raw feature values, or a non-empty JSON list of them")
    src.add_argument("--log-line", help="one tab-separated log line in the spec's column order")
    src.add_argument("--log-file", help="a log file (plain or .gz) with a header; its first --limit data lines")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"with --log-file (default {DEFAULT_LIMIT})")


def check_user_input_args(args: argparse.Namespace) -> None:
    if args.limit < 1:
        raise SystemExit(f"error: --limit must be at least 1, got {args.limit}")
