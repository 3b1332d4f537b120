"""``distributedcharge ledger --role car|wallunit show|export --csv``: read a daemon's records.

Safe to run beside a live daemon: the journals are SQLite in WAL mode, so a reader never
blocks the daemon's writes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from pathlib import Path

from distributedcharge import config

DEFAULT_STATE_DIRS = {"car": "/var/lib/distributedcharge-car", "wallunit": "/var/lib/distributedcharge-wallunit"}


def _ledger_file(role: str) -> str:
    if role == "car":
        from car.journal import JOURNAL_FILE

        return JOURNAL_FILE
    from wallunit.config import LEDGER_FILENAME

    return LEDGER_FILENAME


def _open(role: str, path: Path):
    if role == "car":
        from car.journal import Journal

        return Journal(path)
    from wallunit.ledger import open_ledger

    return open_ledger(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=sorted(DEFAULT_STATE_DIRS), required=True)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", help="the daemon's config file (its [state] dir locates the ledger)")
    where.add_argument("--db", help="path of the ledger file itself")
    parser.add_argument("action", choices=["show", "export"])
    parser.add_argument("--csv", action="store_true", help="with export: CSV (the default and only format)")
    parser.add_argument("-o", "--output", help="with export: write to this file instead of stdout")


def _ledger_path(args: argparse.Namespace) -> Path:
    if args.db:
        return Path(args.db)
    if args.config:
        _, cfg = config.load(args.config, args.role)
        return Path(cfg["state"]["dir"]) / _ledger_file(args.role)
    return Path(DEFAULT_STATE_DIRS[args.role]) / _ledger_file(args.role)


def run(args: argparse.Namespace) -> int:
    try:
        path = _ledger_path(args)
    except config.ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    if not path.exists():
        print(f"{path}: no ledger here yet (has the daemon run?)", file=sys.stderr)
        return 1
    ledger = _open(args.role, path)
    try:
        if args.action == "show":
            for line in ledger.show_lines():
                print(line)
            return 0
        header, rows = ledger.export_rows()
        with open(args.output, "w", newline="") if args.output else contextlib.nullcontext(sys.stdout) as out:
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows(rows)
        return 0
    finally:
        ledger.close()
