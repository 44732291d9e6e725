"""Command line of the end-to-end benchmark: ``python -m benchmarks.e2e [options]``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from benchmarks.e2e import callgrind, h2load, instruction_report, instructions, report, runner
from benchmarks.e2e.nodejs import NodeSetupError
from benchmarks.e2e.servers import (
    SERVER_ENTRIES,
    SERVER_ENTRIES_BY_NAME,
    ServerEntry,
    ServerStartError,
)
from benchmarks.e2e.stubs import StubGenerationError
from benchmarks.e2e.workloads import WORKLOADS, WORKLOADS_BY_NAME, Workload


@dataclass(frozen=True)
class Mode:
    """Default rounds, round length and warm-up of one run mode."""

    rounds: int
    duration_s: float
    warmup_s: float


MODES = {
    "default": Mode(rounds=5, duration_s=4.0, warmup_s=2.0),
    "quick": Mode(rounds=2, duration_s=1.0, warmup_s=0.5),
    # One wave of calls per round and per warm-up: proves the plumbing, measures nothing.
    "self-check": Mode(rounds=1, duration_s=0.0, warmup_s=0.0),
    # Samples of instructions per call: fixed batch sizes, so no duration or warm-up time.
    "instructions": Mode(rounds=2, duration_s=0.0, warmup_s=0.0),
}
"""Run modes; explicit ``--rounds``, ``--duration`` and ``--warmup`` override them."""


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}"
        )
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the harness."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e",
        description="Benchmark fastinject, grpc.aio, grpclib and grpc-js serving the interop "
        "TestService, driven by h2load (server pinned to one CPU, h2load to another).",
    )
    server_names = [entry.name for entry in SERVER_ENTRIES]
    workload_names = [workload.name for workload in WORKLOADS]
    parser.add_argument(
        "--servers",
        type=lambda text: _names(text, server_names, "server"),
        help=f"comma-separated, from {','.join(server_names)} "
        "(default: every importable one except fastinject-py)",
    )
    parser.add_argument(
        "--workloads",
        type=lambda text: _names(text, workload_names, "workload"),
        help=f"comma-separated, from {','.join(workload_names)} (default: all)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 short rounds: under a minute")
    mode.add_argument(
        "--self-check",
        action="store_true",
        help="one wave of calls per server and workload: checks the plumbing only",
    )
    mode.add_argument(
        "--instructions",
        action="store_true",
        help="count server instructions per call under valgrind's callgrind instead of timing "
        "(repeatable on a busy machine; 8-10 minutes for 3 servers)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        help="timed rounds per server (default 5); with --instructions, samples (default 2)",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--duration",
        type=_non_negative_float,
        help="target seconds per round; the call count is sized from the warm-up (default 4)",
    )
    length.add_argument(
        "--requests", type=_positive_int, help="fixed number of calls per round, every workload"
    )
    parser.add_argument(
        "--warmup", type=_non_negative_float, help="warm-up seconds per server and workload"
    )
    parser.add_argument(
        "--baseline",
        default="grpc.aio",
        choices=server_names,
        help="server the ratios compare with (default grpc.aio)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="every server serves TLS (ALPN h2) with a certificate generated for the run; "
        "h2load connects over https",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the servers are pinned to")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU h2load is pinned to")
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything with taskset")
    parser.add_argument("--h2load", default=h2load.H2LOAD, help="path of the h2load binary")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write all results here")
    parser.add_argument("--list", action="store_true", help="list servers and workloads, then exit")
    return parser


def _why_not(entry: ServerEntry, counting: bool) -> str | None:
    """Return why ``entry`` cannot run in this mode (``counting``: --instructions), or None."""
    if counting and not entry.callgrind:
        return "callgrind cannot count its instructions (--instructions)"
    return entry.missing()


def _select_servers(
    parser: argparse.ArgumentParser, names: list[str] | None, counting: bool
) -> list[ServerEntry]:
    if names is not None:
        entries = [SERVER_ENTRIES_BY_NAME[name] for name in names]
        for entry in entries:
            reason = _why_not(entry, counting)
            if reason is not None:
                parser.error(f"server {entry.name} cannot run: {reason}")
        return entries
    entries = []
    for entry in SERVER_ENTRIES:
        if not entry.default:
            continue
        reason = _why_not(entry, counting)
        if reason is None:
            entries.append(entry)
        else:
            print(f"skipping server {entry.name}: {reason}", file=sys.stderr)
    if not entries:
        parser.error("no server can run here")
    return entries


def parse_options(argv: Sequence[str] | None = None) -> tuple[runner.Options, argparse.Namespace]:
    """Parse ``argv`` into runner options; exits with a usage error on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for entry in SERVER_ENTRIES:
            state = entry.missing() or ("available" if entry.default else "available, not default")
            print(f"server   {entry.name:14} {entry.description} [{state}]")
        for workload in WORKLOADS:
            print(f"workload {workload.name:14} {workload.description}")
        raise SystemExit(0)
    chosen = (
        ("quick", args.quick),
        ("self-check", args.self_check),
        ("instructions", args.instructions),
    )
    mode = MODES[next((name for name, on in chosen if on), "default")]
    if args.instructions:
        _check_instructions_mode(parser, args)
    workloads: list[Workload] = [
        WORKLOADS_BY_NAME[name] for name in args.workloads or [w.name for w in WORKLOADS]
    ]
    if args.requests is not None:
        most_clients = max(workload.clients for workload in workloads)
        if args.requests < most_clients:
            parser.error(f"--requests must be at least {most_clients} (one call per connection)")
    cpus = os.cpu_count() or 1
    for option, cpu in (("--server-cpu", args.server_cpu), ("--client-cpu", args.client_cpu)):
        if not args.no_pin and not 0 <= cpu < cpus:
            parser.error(f"{option} {cpu} is not a CPU of this machine (0..{cpus - 1})")
    if not args.no_pin and args.server_cpu == args.client_cpu:
        parser.error("--server-cpu and --client-cpu must differ (or use --no-pin)")
    if shutil.which(args.h2load) is None:
        parser.error(f"h2load not found at {args.h2load} (Debian: apt install nghttp2-client)")
    options = runner.Options(
        servers=tuple(_select_servers(parser, args.servers, args.instructions)),
        workloads=tuple(workloads),
        rounds=args.rounds or mode.rounds,
        duration_s=mode.duration_s if args.duration is None else args.duration,
        requests=args.requests,
        warmup_s=mode.warmup_s if args.warmup is None else args.warmup,
        server_cpu=None if args.no_pin else args.server_cpu,
        client_cpu=None if args.no_pin else args.client_cpu,
        h2load_path=args.h2load,
        tls=args.tls,
    )
    return (instructions.adapt(options) if args.instructions else options), args


def _check_instructions_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    timing = [
        option
        for option, value in (
            ("--duration", args.duration),
            ("--requests", args.requests),
            ("--warmup", args.warmup),
        )
        if value is not None
    ]
    if timing:
        parser.error(f"--instructions takes no {', '.join(timing)} (its batch sizes are fixed)")
    missing = callgrind.missing_tools()
    if missing:
        parser.error(f"--instructions needs {', '.join(missing)} (Debian: apt install valgrind)")


def environment(options: runner.Options) -> dict[str, Any]:
    """Return the software and machine facts a result depends on."""
    versions: dict[str, str | None] = {}
    for distribution in ("grpcio", "grpclib", "protobuf", "h2"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = None
    cpu_model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    try:
        from fastinject import framing

        framing_implementation: str | None = framing.IMPLEMENTATION
    except ImportError:
        framing_implementation = None
    return {
        "python": sys.version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "h2load": h2load.version(options.h2load_path),
        "fastinject_sources": str(runner.package_root()),
        "fastinject_framing": framing_implementation,
        "packages": versions,
    }


def _common_document(options: runner.Options) -> dict[str, Any]:
    """Return what every mode's JSON output holds: options, environment, workloads."""
    return {
        "options": {
            "servers": [entry.name for entry in options.servers],
            "workloads": [workload.name for workload in options.workloads],
            "rounds": options.rounds,
            "server_cpu": options.server_cpu,
            "client_cpu": options.client_cpu,
            "tls": options.tls,
        },
        "environment": environment(options),
        "workloads": {
            w.name: {
                "method": w.method,
                "clients": w.clients,
                "streams": w.streams,
                "messages_per_call": w.messages_per_call,
                "connection_per_call": w.connection_per_call,
                "instructions": asdict(w.instructions),
                "description": w.description,
            }
            for w in options.workloads
        },
    }


def _problems_document(
    failures: dict[tuple[str, str], str], exit_codes: dict[str, int]
) -> dict[str, Any]:
    return {
        "failures": [
            {"workload": workload, "server": server, "reason": reason}
            for (workload, server), reason in failures.items()
        ],
        "server_exit_codes": exit_codes,
    }


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {path}")


def _report_problems(failures: dict[tuple[str, str], str], exit_codes: dict[str, int]) -> bool:
    """Print every failure and unclean exit; return whether there was any."""
    for (workload, server), reason in failures.items():
        print(f"FAILED {workload} on {server}: {reason}")
    bad_exits = {name: code for name, code in exit_codes.items() if code != 0}
    for name, code in bad_exits.items():
        print(f"server {name} exited with status {code} on SIGTERM (expected 0)")
    return bool(failures or bad_exits)


def _report_throughput(
    options: runner.Options, args: argparse.Namespace, outcome: runner.Outcome
) -> int:
    summaries = report.summarise(
        outcome.rounds, {w.name: w.messages_per_call for w in options.workloads}, args.baseline
    )
    streaming = {w.name for w in options.workloads if w.messages_per_call > 1}
    print()
    if options.tls:
        print("over TLS (ALPN h2, EC P-256 certificate)")
    print(report.format_table(summaries, streaming, args.baseline))
    latency = report.format_latency_table(summaries)
    if latency:
        print()
        print(latency)
    failed = _report_problems(outcome.failures, outcome.exit_codes)
    if args.json is not None:
        document = _common_document(options)
        document["options"].update(
            duration_s=options.duration_s, requests=options.requests, warmup_s=options.warmup_s
        )
        document["rounds"] = [asdict(measured) for measured in outcome.rounds]
        document["summaries"] = [asdict(summary) for summary in summaries]
        document.update(_problems_document(outcome.failures, outcome.exit_codes))
        _write_json(args.json, document)
    if args.self_check and not failed:
        print("self-check passed: every server answered every workload correctly")
    return 1 if failed else 0


def _report_instructions(
    options: runner.Options, args: argparse.Namespace, outcome: instructions.InstructionOutcome
) -> int:
    summaries = instruction_report.summarise(
        outcome.samples, {w.name: w.messages_per_call for w in options.workloads}, args.baseline
    )
    comparisons = instruction_report.compare(summaries)
    settings = {w.name: w.instructions.describe() for w in options.workloads}
    streaming = {w.name for w in options.workloads if w.messages_per_call > 1}
    print()
    print(
        instruction_report.format_table(summaries, comparisons, settings, streaming, args.baseline)
    )
    failed = _report_problems(outcome.failures, outcome.exit_codes)
    if args.json is not None:
        document = _common_document(options)
        document["mode"] = "instructions"
        document["environment"]["valgrind"] = callgrind.version()
        document["samples"] = [
            {**asdict(sample), "per_call": sample.per_call, "per_batch": sample.per_batch}
            for sample in outcome.samples
        ]
        document["summaries"] = [asdict(summary) for summary in summaries]
        document["comparisons"] = [
            {**asdict(comparison), "within": comparison.within} for comparison in comparisons
        ]
        document.update(_problems_document(outcome.failures, outcome.exit_codes))
        _write_json(args.json, document)
    return 1 if failed else 0


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived; like KeyboardInterrupt, it unwinds through every cleanup."""

    def __init__(self, signum: int) -> None:
        """Record which signal arrived."""
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_interrupted(signum: int, _frame: FrameType | None) -> NoReturn:
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness; return 0 when every selected server passed every workload."""
    options, args = parse_options(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    if options.client_cpu is not None:
        # Keep the harness, idle while h2load runs, off the servers' CPU too.
        os.sched_setaffinity(0, {options.client_cpu})
    try:
        outcome = _measure(options, args)
    except (KeyboardInterrupt, Interrupted) as interruption:
        print("interrupted: every server and h2load were stopped", file=sys.stderr)
        return 128 + (
            interruption.signum if isinstance(interruption, Interrupted) else signal.SIGINT
        )
    except (runner.HarnessError, StubGenerationError, NodeSetupError, ServerStartError) as error:
        print(f"cannot run the benchmark: {error}", file=sys.stderr)
        return 2
    if isinstance(outcome, instructions.InstructionOutcome):
        return _report_instructions(options, args, outcome)
    return _report_throughput(options, args, outcome)


def _measure(
    options: runner.Options, args: argparse.Namespace
) -> runner.Outcome | instructions.InstructionOutcome:
    return instructions.run(options) if args.instructions else runner.run(options)
