"""Bookkeeping of an attack run: the legitimate client's calls, server samples, the table.

Pure functions and plain data, so ``test_runner.py`` can check them without any server.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.e2e import procstat

MIB = 1024 * 1024
GOODPUT_TARGET = 90.0
"""Goodput under attack, in percent of the baseline, that every server should keep."""
RSS_TARGET_MIB = 64.0
"""Server RSS growth, in MiB, that an attack should not exceed."""


@dataclass(frozen=True)
class Call:
    """One call of the legitimate client: when it started (monotonic s), how long, success."""

    start: float
    latency: float
    ok: bool


@dataclass(frozen=True)
class Window:
    """A phase of the run on the monotonic clock shared by every local process."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        """The window's length."""
        return self.end - self.start


@dataclass(frozen=True)
class ClientFigures:
    """The legitimate client's calls that started in one window."""

    ok: int
    failed: int
    goodput: float  # successful calls per second
    p99: float  # seconds; NaN without a successful call


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def client_figures(calls: Iterable[Call], window: Window) -> ClientFigures:
    """Goodput and p99 latency of the calls that started inside ``window``."""
    inside = [c for c in calls if window.start <= c.start < window.end]
    latencies = [c.latency for c in inside if c.ok]
    return ClientFigures(
        ok=len(latencies),
        failed=len(inside) - len(latencies),
        goodput=len(latencies) / window.seconds,
        p99=percentile(latencies, 0.99),
    )


@dataclass(frozen=True)
class ServerSample:
    """Memory, descriptors and CPU of a server process at one moment."""

    rss: int  # bytes
    peak_rss: int  # bytes, the process's high-water mark so far
    fds: int
    cpu: float  # seconds, with descendants


def sample_server(pid: int) -> ServerSample:
    """Read a server's RSS, peak RSS, open fds and CPU seconds from ``/proc``."""
    status = read_status(Path(f"/proc/{pid}/status").read_text())
    return ServerSample(
        rss=status["VmRSS"],
        peak_rss=status["VmHWM"],
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        cpu=procstat.cpu_seconds(pid),
    )


def read_status(text: str) -> dict[str, int]:
    """The ``kB`` fields of a ``/proc/<pid>/status`` text, in bytes."""
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) * 1024
    return fields


@dataclass
class AttackerView:
    """What the attacker did and what the server told it."""

    connections: int = 0
    frames: int = 0
    connect_failures: int = 0
    closed_by_server: int = 0
    goaways: dict[int, int] = field(default_factory=dict)  # error code -> count
    resets: dict[int, int] = field(default_factory=dict)  # RST_STREAM error code -> count

    def summary(self) -> str:
        """A short account for the table, e.g. ``3 conns, GOAWAY ENHANCE_YOUR_CALM x3``."""
        parts = [f"{self.connections} conns"]
        parts += [f"GOAWAY {_ERROR_NAMES.get(code, hex(code))} x{count}"
                 for code, count in sorted(self.goaways.items())]
        parts += [f"RST {_ERROR_NAMES.get(code, hex(code))} x{count}"
                  for code, count in sorted(self.resets.items())]
        if self.closed_by_server:
            parts.append(f"{self.closed_by_server}/{self.connections} closed")
        if self.connect_failures:
            parts.append(f"{self.connect_failures} refused")
        return ", ".join(parts)


_ERROR_NAMES = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
    0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL", 0x9: "COMPRESSION_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
}


@dataclass(frozen=True)
class Outcome:
    """One attack against one server, reduced to the table's figures."""

    attack: str
    server: str
    baseline: ClientFigures
    attacked: ClientFigures
    before: ServerSample
    after: ServerSample
    settled: ServerSample  # after the attacker left and the client finished
    seconds: float  # length of the attack window
    attacker: AttackerView

    @property
    def goodput_percent(self) -> float:
        """Goodput under attack in percent of the baseline."""
        if self.baseline.goodput == 0:
            return math.nan
        return 100.0 * self.attacked.goodput / self.baseline.goodput

    @property
    def p99_ratio(self) -> float:
        """p99 latency under attack over the baseline's."""
        return self.attacked.p99 / self.baseline.p99 if self.baseline.p99 > 0 else math.nan

    @property
    def rss_growth_mib(self) -> float:
        """Peak RSS during the attack less the RSS before it, in MiB."""
        return max(0, self.after.peak_rss - self.before.rss) / MIB

    @property
    def cpu_percent(self) -> float:
        """Server CPU during the attack window, in percent of one core."""
        return 100.0 * (self.after.cpu - self.before.cpu) / self.seconds

    @property
    def fds_left(self) -> int:
        """Open fds after everyone left, less those before the attack."""
        return self.settled.fds - self.before.fds

    @property
    def meets_target(self) -> bool:
        """Goodput at least :data:`GOODPUT_TARGET` and RSS growth under :data:`RSS_TARGET_MIB`."""
        return self.goodput_percent >= GOODPUT_TARGET and self.rss_growth_mib < RSS_TARGET_MIB


def at_least_as_good(ours: Outcome, peers: Sequence[Outcome]) -> bool:
    """Whether ``ours`` is at least as good as the better peer on goodput and on RSS growth.

    5 points of goodput and 8 MiB of RSS are allowed for noise.
    """
    if not peers:
        return True
    best_goodput = max(p.goodput_percent for p in peers)
    least_growth = min(p.rss_growth_mib for p in peers)
    return (ours.goodput_percent >= min(best_goodput, 100.0) - 5.0
            and ours.rss_growth_mib <= least_growth + 8.0)


HEADER = (f"{'attack':<22} {'server':<12} {'goodput':>8} {'p99 x':>7} {'RSS +MiB':>9} "
          f"{'CPU %':>6} {'fds +':>6}  {'target':<6} attacker saw")


def table_row(outcome: Outcome, verdict: str) -> str:
    """One line of the table."""
    return (f"{outcome.attack:<22} {outcome.server:<12} {outcome.goodput_percent:>7.0f}% "
            f"{outcome.p99_ratio:>7.2f} {outcome.rss_growth_mib:>9.1f} "
            f"{outcome.cpu_percent:>6.0f} {outcome.fds_left:>6d}  {verdict:<6} "
            f"{outcome.attacker.summary()}")


def verdict(outcome: Outcome, peers: Sequence[Outcome], ours: str) -> str:
    """``ok``/``MISS`` against the targets; for server ``ours`` also against ``peers``."""
    if not outcome.meets_target:
        return "MISS"
    if outcome.server == ours and not at_least_as_good(outcome, peers):
        return "behind"
    return "ok"
