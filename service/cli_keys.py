"""`r2m keys new|hash`: make API keys and the key-file lines that hold only their digests.

`new` prints the key alone on stdout (so `KEY=$(r2m keys new ...)` works) and appends its line
to `--file` (or shows the line on stderr). `hash` reads a key from stdin, never from the command
line, where it would land in shell history and `ps`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r2m_service.api_keys import Scope, key_line, new_key, parse_scopes


def add_keys_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="make API keys (see `r2m keys new -h`)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    scopes_help = (f"comma-separated scopes from {', '.join(s.value for s in Scope)} "
                   "(admin implies all)")
    new = actions.add_parser("new", help="make a key; print it, store only its digest")
    hashed = actions.add_parser("hash", help="key on stdin → its key-file line")
    for parser in (new, hashed):
        parser.add_argument("--scopes", default="score,update", help=scopes_help)
        parser.add_argument("--name", default="", help="label shown in logs (no spaces)")
    new.add_argument("--file", type=Path, help="append the key-file line to this file")


def run_keys(args: argparse.Namespace) -> int:
    try:
        scopes = parse_scopes(args.scopes)
    except ValueError as exc:
        print(f"r2m keys: {exc}", file=sys.stderr)
        return 2
    if " " in args.name:
        print("r2m keys: --name must not contain spaces", file=sys.stderr)
        return 2
    if args.keys_command == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("r2m keys hash: expected the key on stdin", file=sys.stderr)
            return 2
        print(key_line(key, scopes, args.name))
        return 0
    key = new_key()
    line = key_line(key, scopes, args.name)
    if args.file is None:
        print(f"add this line to the key file (or R2M_API_KEYS):\n{line}", file=sys.stderr)
    else:
        with args.file.open("a") as out:
            out.write(line + "\n")
    print(key)
    return 0
