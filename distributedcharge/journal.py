"""Durable SQLite journals shared by the car and wall-unit ledgers.

WAL mode with ``synchronous=FULL`` means a committed row survives a kill -9 or a power
cut: the daemons commit what they are about to do (pay, sell) before they do it, and
reconcile from these rows on start.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Sequence


def open_journal(path: str | Path, migrations: Sequence[str]) -> sqlite3.Connection:
    """Open (creating if needed) a journal and bring its schema up to date.

    ``migrations[i]`` is the SQL script that takes the schema from version ``i`` to
    ``i + 1``; ``PRAGMA user_version`` records how far a file has come.
    """
    path = Path(path)
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        conn.close()
        raise RuntimeError(f"{path}: journal schema version {version} is newer than this program knows")
    for number in range(version, len(migrations)):
        # executescript commits any open transaction first, so the whole step is one script.
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{migrations[number]}\n;PRAGMA user_version={number + 1};\nCOMMIT;"
        )
    return conn


class transaction:
    """``with transaction(conn):`` commits on success and rolls back on any exception."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
