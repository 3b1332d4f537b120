"""``distributedcharge simnet``: run, bake macaroons for, and control a simulated network.

    distributedcharge simnet --state-dir DIR [--node NAME[:SATS]]...
    distributedcharge simnet bake --state-dir DIR --node NAME PERM... [-o FILE]
    distributedcharge simnet control --state-dir DIR NODE offline|online|latency MS|fail-payments N

Without ``--node`` the network is ``car:1000000`` and ``wall``. A node with SATS opens a
channel of that size towards the next node listed (the last towards the first). Nodes are
created on the first run; later runs serve what ``DIR`` holds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import signal
import sqlite3
import sys
from pathlib import Path

from distributedcharge import log
from distributedcharge.lightning import macaroons
from distributedcharge.simnet import control, tls
from distributedcharge.simnet.server import DEFAULT_NODES, STATE_FILE, Simnet, SimnetError
from distributedcharge.simnet.state import NetworkState

# lnd's BakeMacaroon vocabulary (rpcserver.go validActions / validEntities).
VALID_ACTIONS = ("read", "write", "generate")
VALID_ENTITIES = (
    "onchain", "offchain", "address", "message", "remotesigner", "peers", "info", "invoices", "signer",
    "macaroon", "uri",
)
_HELP = (
    f"supported actions are [{' '.join(VALID_ACTIONS)}], "
    f"supported entities are [{' '.join(VALID_ENTITIES)}]"
)
MAX_ROOT_KEY_ID = 2**64 - 1


class UsageError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--state-dir", metavar="DIR", help="directory for the network's books and the nodes' files")
    parser.add_argument(
        "--node", action="append", dest="nodes", metavar="NAME[:SATS]",
        help="a node, optionally with a channel of SATS towards the next node (repeatable)",
    )
    parser.add_argument("--fee-base-msat", type=int, default=1000, metavar="MSAT",
                        help="routing fee base, msat (default 1000)")
    parser.add_argument("--fee-ppm", type=int, default=1, metavar="PPM", help="routing fee rate, ppm (default 1)")
    parser.add_argument(
        "--payment-latency-ms", type=int, default=20, metavar="MS",
        help="time between a payment's IN_FLIGHT and its outcome, ms (default 20)",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    actions = parser.add_subparsers(dest="action", metavar="{bake,control}")

    bake = actions.add_parser("bake", help="mint a macaroon as 'lncli bakemacaroon' does")
    bake.add_argument("--state-dir", required=True, metavar="DIR", help="the simnet's directory")
    bake.add_argument("--node", required=True, dest="node", metavar="NAME")
    bake.add_argument("permissions", nargs="+", metavar="PERM", help="entity:action or uri:/pkg.Service/Method")
    bake.add_argument("-o", "--save-to", dest="output", metavar="FILE", help="write the binary macaroon here")
    bake.add_argument("--timeout", type=int, metavar="SECONDS", help="add a time-before caveat")
    bake.add_argument("--ip-address", metavar="IP", help="add an ipaddr caveat")
    bake.add_argument("--ip-range", metavar="CIDR", help="add an iprange caveat")
    bake.add_argument("--root-key-id", type=int, default=0, metavar="N", help="root key to sign with (default 0)")

    ctl = actions.add_parser("control", help="change a running node: offline, online, latency, fail-payments")
    ctl.add_argument("--state-dir", required=True, metavar="DIR", help="the running simnet's directory")
    ctl.add_argument("node_name", metavar="NODE")
    ctl.add_argument("control_action", metavar="ACTION", choices=control.ACTIONS)
    ctl.add_argument("value", nargs="?", metavar="VALUE", help="MS for latency, N for fail-payments")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "bake":
            return _bake(args)
        if args.action == "control":
            return _control(args)
        return _serve(args)
    except (UsageError, SimnetError, control.ControlError, macaroons.MacaroonError) as exc:
        print(f"distributedcharge simnet: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


def parse_node_spec(text: str) -> tuple[str, int]:
    name, colon, sats = text.partition(":")
    if not colon:
        return name, 0
    if not sats.isascii() or not sats.isdigit():
        raise UsageError(f"--node {text!r}: SATS must be a whole number of satoshis")
    return name, int(sats)


def _serve(args: argparse.Namespace) -> int:
    if not args.state_dir:
        raise UsageError("--state-dir is required")
    if args.payment_latency_ms < 0:
        raise UsageError("--payment-latency-ms cannot be negative")
    log.configure(args.log_level)
    specs = [parse_node_spec(text) for text in args.nodes] if args.nodes else list(DEFAULT_NODES)
    simnet = Simnet(
        args.state_dir, specs, fee_base_msat=args.fee_base_msat, fee_ppm=args.fee_ppm,
        payment_latency_s=args.payment_latency_ms / 1000,
    )
    return asyncio.run(_serve_until_signal(simnet))


async def _serve_until_signal(simnet: Simnet) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await simnet.start()
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        raise SimnetError(f"cannot start: {exc}") from None
    try:
        for name, node in simnet.nodes.items():
            print(f"{name} {node.host}:{node.port} {node.pubkey} {node.node_json_path}")
        print(f"simnet ready; try: distributedcharge simnet control --state-dir {simnet.state_dir} NODE ACTION")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await simnet.stop()
    return 0


def parse_permission(text: str) -> tuple[str, str]:
    """One ``entity:action`` argument, checked as lncli and lnd's BakeMacaroon check it."""
    parts = text.split(":")
    if len(parts) != 2:
        raise UsageError(f"unable to parse permission tuple: {text}")
    entity, action = parts
    if not entity:
        raise UsageError(f"invalid permission [{text}]. entity cannot be empty")
    if not action:
        raise UsageError(f"invalid permission [{text}]. action cannot be empty")
    if entity not in VALID_ENTITIES:
        raise UsageError(f"invalid permission entity. {_HELP}")
    if entity == "uri":
        if action not in macaroons.METHOD_PERMISSIONS:
            raise UsageError(
                "invalid permission action, must be an existing URI in the format /package.Service/MethodName"
            )
    elif action not in VALID_ACTIONS:
        raise UsageError(f"invalid permission action. {_HELP}")
    return entity, action


def _bake(args: argparse.Namespace) -> int:
    permissions = [parse_permission(text) for text in args.permissions]
    if not 0 <= args.root_key_id <= MAX_ROOT_KEY_ID:
        raise UsageError(f"--root-key-id must be from 0 to {MAX_ROOT_KEY_ID}")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    database = Path(args.state_dir) / STATE_FILE
    if not database.is_file():
        raise UsageError(f"no simnet state in {args.state_dir} ({database} does not exist)")
    state = NetworkState(database)
    try:
        if args.node not in state.node_names():
            raise UsageError(f"no node {args.node!r} in {args.state_dir}; nodes: {', '.join(state.node_names())}")
        storage_id = str(args.root_key_id)
        raw = macaroons.bake(state.root_key(args.node, storage_id), permissions, storage_id=storage_id)
    finally:
        state.close()
    if args.timeout is not None:
        deadline = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=args.timeout)
        raw = macaroons.add_first_party_caveat(raw, macaroons.time_before_caveat(deadline))
    if args.ip_address is not None:
        raw = macaroons.add_first_party_caveat(raw, macaroons.ip_address_caveat(args.ip_address))
    if args.ip_range is not None:
        raw = macaroons.add_first_party_caveat(raw, macaroons.ip_range_caveat(args.ip_range))
    if args.output:
        try:
            tls.write_atomically(Path(args.output), raw, 0o600)
        except OSError as exc:
            raise UsageError(f"{args.output}: cannot write: {exc.strerror or exc}") from None
    else:
        print(raw.hex())
    return 0


def _control(args: argparse.Namespace) -> int:
    request = control.build_request(args.node_name, args.control_action, args.value)
    answer = control.send(args.state_dir, request)
    if not answer.get("ok"):
        raise control.ControlError(str(answer.get("error", "refused")))
    print(json.dumps(answer.get("node")))
    return 0
