"""Become a command that dies with the simulator that started it.

``python -m distributedcharge.sim.die_with_parent PARENT_PID COMMAND [ARG...]`` asks Linux
to send it SIGTERM when its parent goes (``PR_SET_PDEATHSIG`` outlives ``exec``), checks
the parent did not go first, and execs COMMAND in its own place (same pid). Asking here, in
a fresh interpreter, rather than in a ``preexec_fn``, keeps Python out of the moment between
fork and exec, where a parent with threads (gRPC's among them) can leave a lock held forever
and the child hangs before it ever starts.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
USAGE = "usage: python -m distributedcharge.sim.die_with_parent PARENT_PID COMMAND [ARG...]"


def _ask_for_sigterm_when_parent_dies() -> bool:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM)) == 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or not args[0].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    parent, command = int(args[0]), args[1:]
    if not _ask_for_sigterm_when_parent_dies():
        print("die_with_parent: PR_SET_PDEATHSIG unavailable; the child may outlive its parent", file=sys.stderr)
    if os.getppid() != parent:
        print(f"die_with_parent: parent {parent} is gone; not starting {command[0]}", file=sys.stderr)
        return 1
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"die_with_parent: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
