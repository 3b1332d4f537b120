"""``distributedcharge config check FILE``: the same validation a daemon runs at start."""

from __future__ import annotations

import argparse
import sys

from distributedcharge import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate a car or wall-unit config file")
    check.add_argument("file")


def run(args: argparse.Namespace) -> int:
    try:
        role, _ = config.load(args.file)
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"{args.file}: valid {role} configuration")
    return 0
