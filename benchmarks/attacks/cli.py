"""Command line: ``python -m benchmarks.attacks [--attacks A,B] [--servers X,Y] [...]``."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from benchmarks.attacks import measure, runner
from benchmarks.attacks.catalog import ATTACKS, ATTACKS_BY_NAME
from benchmarks.e2e.servers import SERVER_ENTRIES_BY_NAME

DEFAULT_SERVERS = ("fastinject", "grpc.aio", "grpc-js")
OURS = "fastinject"


def _names(value: str, known: Mapping[str, object], what: str) -> list[str]:
    names = [name for name in value.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown)}")
    return names


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.attacks",
        description="Each attack of issue 9 against fastinject, grpc.aio and grpc-js: the "
        "legitimate client's goodput and p99 under attack, server RSS growth and CPU.",
    )
    parser.add_argument("--attacks", default=",".join(a.name for a in ATTACKS),
                        type=lambda v: _names(v, ATTACKS_BY_NAME, "attack"),
                        help="comma-separated attack names (default: all; --list shows them)")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        type=lambda v: _names(v, SERVER_ENTRIES_BY_NAME, "server"),
                        help=f"comma-separated servers (default: {','.join(DEFAULT_SERVERS)})")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of the baseline and of the attack window (default 5)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="legitimate calls per second (default 200)")
    parser.add_argument("--intensity", type=float, default=1.0,
                        help="scales every attack's frame/connection/cycle budget (default 1)")
    parser.add_argument("--server-cpu", type=int, help="pin each server to this CPU")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the attacks and print the table."""
    args = parse(argv)
    if args.list:
        for attack in ATTACKS:
            print(f"{attack.name:<22} {attack.description}{' (TLS)' if attack.tls else ''}")
        return
    servers = []
    for name in args.servers:
        entry = SERVER_ENTRIES_BY_NAME[name]
        missing = entry.missing()
        if missing is not None:
            print(f"skipping {name}: {missing}", file=sys.stderr)
            continue
        servers.append(entry)
    plan = runner.Plan(
        attacks=[ATTACKS_BY_NAME[name] for name in args.attacks],
        servers=servers,
        seconds=args.seconds,
        rate=args.rate,
        intensity=args.intensity,
        server_cpu=args.server_cpu,
    )
    with tempfile.TemporaryDirectory(prefix="fastinject-attacks-") as tmp:
        outcomes = runner.run(plan, Path(tmp), lambda line: print(line, file=sys.stderr,
                                                                  flush=True))
    print(report(outcomes))


def report(outcomes: list[measure.Outcome]) -> str:
    """The table: one row per (attack, server), a verdict per row."""
    lines = [measure.HEADER]
    for outcome in outcomes:
        peers = [o for o in outcomes if o.attack == outcome.attack and o.server != OURS]
        lines.append(measure.table_row(outcome, measure.verdict(outcome, peers, OURS)))
    lines.append(
        f"target: goodput >= {measure.GOODPUT_TARGET:.0f}% of baseline and RSS growth < "
        f"{measure.RSS_TARGET_MIB:.0f} MiB (MISS otherwise); {OURS} 'behind' = worse than the "
        "better peer on goodput (5 points slack) or RSS growth (8 MiB slack)"
    )
    return "\n".join(lines)
