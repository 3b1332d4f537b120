"""``distributedcharge ledger --role car|wallunit show|export --csv``: read a daemon's records.

Opens the journal read-only in spirit: it never migrates or writes, so it is safe to run
beside a live daemon (WAL lets readers and the writer proceed together).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import sys
from pathlib import Path

from distributedcharge import config

LEDGERS = {
    "car": ("car.journal", "/var/lib/distributedcharge-car/journal.sqlite3"),
    "wallunit": ("wallunit.ledger", "/var/lib/distributedcharge-wallunit/ledger.sqlite3"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=sorted(LEDGERS), required=True)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", help="the daemon's config file (its [state] dir locates the ledger)")
    where.add_argument("--db", help="path of the ledger file itself")
    parser.add_argument("action", choices=["show", "export"])
    parser.add_argument("--csv", action="store_true", help="with export: CSV (the only format so far)")
    parser.add_argument("-o", "--output", help="with export: write to this file instead of stdout")


def _ledger_path(args: argparse.Namespace) -> Path:
    module_name, default = LEDGERS[args.role]
    if args.db:
        return Path(args.db)
    if args.config:
        _, cfg = config.load(args.config, args.role)
        return Path(cfg["state"]["dir"]) / Path(default).name
    return Path(default)


def run(args: argparse.Namespace) -> int:
    try:
        path = _ledger_path(args)
    except config.ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    if not path.exists():
        print(f"{path}: no ledger here yet (has the daemon run?)", file=sys.stderr)
        return 1
    module = importlib.import_module(LEDGERS[args.role][0])
    ledger = module.open_ledger(path)
    try:
        if args.action == "show":
            for line in ledger.show_lines():
                print(line)
            return 0
        header, rows = ledger.export_rows()
        out = open(args.output, "w", newline="") if args.output else sys.stdout
        try:
            writer = csv.writer(out)
            writer.writerow(header)
            writer.writerows(rows)
        finally:
            if args.output:
                out.close()
        return 0
    finally:
        ledger.close()
