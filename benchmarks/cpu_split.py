"""Where a fastinject call's CPU goes: h2, fastinject, asyncio, the application, the kernel.

``python -m benchmarks.cpu_split [--workloads a,b] [--calls N]`` runs the interop server under
cProfile on asyncio's own event loop (uvloop's C loop is invisible to cProfile), drives it with
h2load exactly as the end-to-end harness does, and prints per workload the server's CPU time
per call split by where the code lives.  Start-up is cancelled out: a second server serves one
wave of calls only, and its profile is subtracted.  cProfile slows Python functions more than
C ones, so read the shares, not the absolute microseconds (the harness measures those).
"""

from __future__ import annotations

import argparse
import pstats
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.e2e import h2load
from benchmarks.e2e.runner import REPOSITORY, package_root
from benchmarks.e2e.servers import ServerProcess, child_environment
from benchmarks.e2e.workloads import WORKLOADS, WORKLOADS_BY_NAME, Workload

CATEGORIES = (
    ("application (servicer, protobuf)", ("/interop/", "google._upb", "FromString",
                                          "SerializeToString")),
    ("h2 (h2, hpack, hyperframe)", ("/h2/", "/hpack/", "/hyperframe/")),
    ("fastinject", ("/fastinject/",)),
    ("asyncio", ("/asyncio/", "/selectors.py", "_contextvars")),
    ("kernel I/O (send, recv)", ("'send'", "'recv'", "'sendmsg'")),
)
"""Report rows: a profile entry belongs to the first row one of whose markers occurs in its
file name or function name (the interop servicer lives inside the fastinject package, so the
application row comes first); the rest is "other (builtins, stdlib)"."""

IDLE = ("'poll' of 'select.epoll'",)
"""Profile entries that are waiting, not working: left out of the CPU time."""

DEFAULT_CALLS = {"unary-100B": 30_000, "unary-1MiB": 400, "client-stream": 20, "server-stream": 20}
"""Calls per workload: enough for a few seconds of profiled work each."""


ProfileEntries = Mapping[tuple[str, int, str], tuple[Any, ...]]
"""``pstats.Stats.stats``: ``(file, line, function)`` -> ``(calls, primitive, tottime, ...)``."""


def categorise(entries: ProfileEntries) -> dict[str, float]:
    """Seconds of own time (tottime) per report row, idle waiting excluded."""
    totals: dict[str, float] = {}
    for (filename, _, function), row in entries.items():
        where = f"{filename} {function}"
        if any(marker in where for marker in IDLE):
            continue
        name = next(
            (label for label, markers in CATEGORIES if any(m in where for m in markers)),
            "other (builtins, stdlib)",
        )
        totals[name] = totals.get(name, 0.0) + row[2]
    return totals


def profile_workload(workload: Workload, calls: int, work_dir: Path) -> dict[str, float]:
    """Serve ``calls`` calls of ``workload`` under cProfile; return seconds per report row."""
    profile = work_dir / f"{workload.name}-{calls}.prof"
    body = work_dir / f"{workload.name}.body"
    body.write_bytes(workload.request_body())
    argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m",
            "fastinject.interop.server", "--port", "0", "--loop", "asyncio"]
    env = child_environment([str(package_root()), str(REPOSITORY)])
    log_dir = work_dir / f"{workload.name}-{calls}"
    with ServerProcess.start(workload.name, argv, log_dir=log_dir, env=env, cpu=None,
                             ready_timeout_s=60.0) as server:
        command = h2load.command(server.port, workload.path, body, calls, workload.clients,
                                 workload.streams)
        result = h2load.run(command, timeout_s=600.0)
        failures = h2load.problems(result, calls, workload.min_response_data())
        if failures:
            raise SystemExit(f"{workload.name}: {'; '.join(failures)}")
    return categorise(pstats.Stats(str(profile)).stats)  # type: ignore[attr-defined]


def per_call_split(workload: Workload, calls: int, work_dir: Path) -> dict[str, float]:
    """Seconds per call and report row: ``calls`` calls less a one-wave run (start-up)."""
    wave = workload.clients * workload.streams
    if calls <= wave:
        raise SystemExit(f"{workload.name}: --calls must exceed one wave ({wave} calls)")
    full = profile_workload(workload, calls, work_dir)
    baseline = profile_workload(workload, wave, work_dir)
    return {
        label: max(0.0, full.get(label, 0.0) - baseline.get(label, 0.0)) / (calls - wave)
        for label in full
    }


def report(workload: Workload, calls: int, split: dict[str, float]) -> str:
    """The table of one workload: microseconds per call and share per report row."""
    total = sum(split.values())
    lines = [f"{workload.name} ({calls:,} calls, {total * 1e6:,.1f} us/call profiled)"]
    for label in [*(label for label, _ in CATEGORIES), "other (builtins, stdlib)"]:
        seconds = split.get(label, 0.0)
        lines.append(f"  {label:<34} {seconds * 1e6:>10,.1f} us  {seconds / total:>6.1%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Profile the chosen workloads and print their CPU split."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_split", description=__doc__)
    parser.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                        help="comma-separated workload names (default: all)")
    parser.add_argument("--calls", type=int, help="calls per workload (default: per workload)")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastinject-cpu-split-") as scratch:
        for name in options.workloads.split(","):
            workload = WORKLOADS_BY_NAME[name.strip()]
            calls = options.calls or DEFAULT_CALLS[workload.name]
            split = per_call_split(workload, calls, Path(scratch))
            print(report(workload, calls, split), flush=True)


if __name__ == "__main__":
    main()
