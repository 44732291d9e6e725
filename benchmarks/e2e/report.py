"""Measured rounds, their per-server medians and the printed comparison table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
"""The call latency percentiles reported for ``latency`` workloads."""


def percentiles(values: Sequence[float]) -> tuple[float, ...]:
    """Return the :data:`PERCENTILES` of ``values`` (nearest rank: a latency some call had)."""
    if not values:
        raise ValueError("no values to take percentiles of")
    ordered = sorted(values)
    # round(): 99.9 / 100 * 1000 is 999.0000000000001 in binary floating point.
    ranks = (math.ceil(round(p / 100 * len(ordered), 9)) for p in PERCENTILES)
    return tuple(ordered[max(0, rank - 1)] for rank in ranks)


@dataclass(frozen=True)
class Round:
    """One timed h2load run of one workload against one server.

    ``others_load`` is the largest share of a pinned CPU (the server's or h2load's) that other
    processes used during the round and ``steal`` the largest share the hypervisor took; both
    are None when nothing is pinned.  ``latency_s`` holds the :data:`PERCENTILES` of the
    round's call latencies (empty unless the workload logs latencies).
    """

    workload: str
    server: str
    index: int
    calls: int
    elapsed_s: float
    cpu_s: float
    others_load: float | None = None
    steal: float | None = None
    latency_s: tuple[float, ...] = ()

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return self.calls / self.elapsed_s

    @property
    def cpu_per_call(self) -> float:
        """Server CPU seconds per call."""
        return self.cpu_s / self.calls


@dataclass(frozen=True)
class Summary:
    """Medians over the rounds of one workload and server, and their ratios to the baseline.

    ``rate_ratio`` above 1 and ``cpu_ratio`` below 1 mean better than the baseline; both are
    None when the baseline server did not run.  ``spread`` is (max - min) / median of the
    round rates, a rough measure of noise; ``others_load`` is the largest ``others_load`` of
    any round (None when unknown); ``latency_s`` the median over rounds of each latency
    percentile (empty when the rounds logged none).
    """

    workload: str
    server: str
    rounds: int
    rate: float
    messages_per_s: float
    cpu_per_call: float
    spread: float
    others_load: float | None
    rate_ratio: float | None
    cpu_ratio: float | None
    latency_s: tuple[float, ...] = ()


class _Measurement(Protocol):
    @property
    def workload(self) -> str: ...
    @property
    def server(self) -> str: ...


MeasurementT = TypeVar("MeasurementT", bound=_Measurement)


def by_workload_and_server(
    measurements: Iterable[MeasurementT],
) -> dict[tuple[str, str], list[MeasurementT]]:
    """Group measurements by (workload, server), keeping the order each pair was first seen."""
    grouped: dict[tuple[str, str], list[MeasurementT]] = {}
    for measured in measurements:
        grouped.setdefault((measured.workload, measured.server), []).append(measured)
    return grouped


def summarise(
    rounds: Sequence[Round], messages_per_call: Mapping[str, int], baseline: str
) -> list[Summary]:
    """Return one :class:`Summary` per (workload, server), in the order they first ran."""
    grouped = by_workload_and_server(rounds)
    medians = {
        key: (
            statistics.median(r.rate for r in group),
            statistics.median(r.cpu_per_call for r in group),
        )
        for key, group in grouped.items()
    }
    summaries = []
    for (workload, server), group in grouped.items():
        rate, cpu = medians[(workload, server)]
        rates = [r.rate for r in group]
        base = medians.get((workload, baseline))
        loads = [r.others_load for r in group if r.others_load is not None]
        summaries.append(
            Summary(
                workload=workload,
                server=server,
                rounds=len(group),
                rate=rate,
                messages_per_s=rate * messages_per_call[workload],
                cpu_per_call=cpu,
                spread=(max(rates) - min(rates)) / rate,
                others_load=max(loads) if loads else None,
                rate_ratio=rate / base[0] if base and base[0] > 0 else None,
                cpu_ratio=cpu / base[1] if base and base[1] > 0 else None,
                latency_s=_median_percentiles(group),
            )
        )
    return summaries


def _median_percentiles(rounds: Sequence[Round]) -> tuple[float, ...]:
    logged = [r.latency_s for r in rounds if r.latency_s]
    return tuple(statistics.median(column) for column in zip(*logged, strict=True))


def format_seconds(seconds: float) -> str:
    """Format a duration with three significant digits and a unit that suits it."""
    if seconds >= 1:
        unit, value = "s", seconds
    elif seconds >= 1e-3:
        unit, value = "ms", seconds * 1e3
    else:
        unit, value = "us", seconds * 1e6
    decimals = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{decimals}f} {unit}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(summaries: Sequence[Summary], streaming: set[str], baseline: str) -> str:
    """Return the comparison table; messages/s is shown only for ``streaming`` workloads."""
    header = (
        "workload",
        "server",
        "rounds",
        "calls/s",
        "msgs/s",
        "spread",
        "others",
        "CPU/call",
        f"calls/s vs {baseline}",
        f"CPU/call vs {baseline}",
    )
    rows = [header]
    for s in summaries:
        rows.append(
            (
                s.workload,
                s.server,
                str(s.rounds),
                f"{s.rate:,.1f}",
                f"{s.messages_per_s:,.0f}" if s.workload in streaming else "-",
                f"{s.spread:.0%}",
                "-" if s.others_load is None else f"{s.others_load:.0%}",
                format_seconds(s.cpu_per_call),
                _ratio(s.rate_ratio),
                _ratio(s.cpu_ratio),
            )
        )
    lines = _aligned(rows)
    lines.append("")
    lines.append(
        "spread: (max - min) / median of the round rates.  others: the largest share of the "
        "server's or h2load's\nCPU that other processes took during a round; above a few "
        "percent the figures are disturbed."
    )
    return "\n".join(lines)


def format_latency_table(summaries: Sequence[Summary]) -> str:
    """Return the latency percentiles of the summaries that have them ('' when none has)."""
    header = ("workload", "server", *(f"p{p:g}" for p in PERCENTILES))
    rows = [header] + [
        (s.workload, s.server, *(format_seconds(value) for value in s.latency_s))
        for s in summaries
        if s.latency_s
    ]
    if len(rows) == 1:
        return ""
    lines = _aligned(rows)
    lines.append("")
    lines.append(
        "call latency percentiles (h2load: request start to response end), median of the rounds"
    )
    return "\n".join(lines)


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Return ``rows`` as aligned lines: two text columns, then numbers, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines
