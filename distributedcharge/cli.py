"""The ``distributedcharge`` command: a thin dispatcher over subcommand modules.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their subcommand is chosen, so
``config check`` on a Pi does not pay for importing grpc, and a broken optional
dependency cannot take the whole tool down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "car": ("car.daemon", "run the car daemon (pays the wall unit)"),
    "wallunit": ("wallunit.daemon", "run the wall-unit daemon (sells energy)"),
    "config": ("distributedcharge.config_cli", "check a configuration file"),
    "macaroon": ("distributedcharge.lightning.macaroon_cli", "inspect or restrict an LND macaroon"),
    "ledger": ("distributedcharge.ledger_cli", "show or export a daemon's session records"),
    "simnet": ("distributedcharge.simnet.cli", "run an LND-compatible simulated Lightning network"),
    "twcsim": ("distributedcharge.sim.twcsim_cli", "run a simulated TWC Gen 2 slave on a pty or TCP"),
    "simulate": ("distributedcharge.sim.simulate", "play a whole simulated charge session"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distributedcharge",
        description="Pay for EV charging in 25 Wh Lightning payments over SWCAN.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommands:\n"
        + "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items())
        + "\n\nRun 'distributedcharge SUBCOMMAND --help' for its options.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("command", nargs="?", metavar="SUBCOMMAND", choices=list(COMMANDS))
    return parser


def _version() -> str:
    from distributedcharge import __version__

    return f"distributedcharge {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        parser = _top_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _top_parser().parse_args([name])
        return 2
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"distributedcharge {name}", description=summary)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)
