"""Measured rounds, their per-server medians and the printed comparison table."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Round:
    """One timed h2load run of one workload against one server."""

    workload: str
    server: str
    index: int
    calls: int
    elapsed_s: float
    cpu_s: float

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
    round rates, a rough measure of noise.
    """

    workload: str
    server: str
    rounds: int
    rate: float
    messages_per_s: float
    cpu_per_call: float
    spread: float
    rate_ratio: float | None
    cpu_ratio: float | None


def summarise(
    rounds: Sequence[Round], messages_per_call: Mapping[str, int], baseline: str
) -> list[Summary]:
    """Return one :class:`Summary` per (workload, server), in the order they first ran."""
    grouped: dict[tuple[str, str], list[Round]] = {}
    for measured in rounds:
        grouped.setdefault((measured.workload, measured.server), []).append(measured)
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
        summaries.append(
            Summary(
                workload=workload,
                server=server,
                rounds=len(group),
                rate=rate,
                messages_per_s=rate * messages_per_call[workload],
                cpu_per_call=cpu,
                spread=(max(rates) - min(rates)) / rate,
                rate_ratio=rate / base[0] if base and base[0] > 0 else None,
                cpu_ratio=cpu / base[1] if base and base[1] > 0 else None,
            )
        )
    return summaries


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


def format_table(
    summaries: Sequence[Summary], streaming: set[str], baseline: str
) -> str:
    """Return the comparison table; messages/s is shown only for ``streaming`` workloads."""
    header = (
        "workload", "server", "rounds", "calls/s", "msgs/s", "spread", "CPU/call",
        f"calls/s vs {baseline}", f"CPU/call vs {baseline}",
    )
    rows = [header]
    for s in summaries:
        rows.append((
            s.workload, s.server, str(s.rounds), f"{s.rate:,.1f}",
            f"{s.messages_per_s:,.0f}" if s.workload in streaming else "-",
            f"{s.spread:.0%}", format_seconds(s.cpu_per_call),
            _ratio(s.rate_ratio), _ratio(s.cpu_ratio),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)
