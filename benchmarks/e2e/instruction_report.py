"""Instructions per call: the arithmetic of the ``--instructions`` mode and its printed table.

One :class:`Sample` is a small and a large batch of calls measured back to back on one server.
Everything a batch costs besides its calls (h2load connecting and disconnecting, the first
and last wave not overlapping) is the same in both batches, so it cancels in
``(I_large - I_small) / (N_large - N_small)``.

Python's cyclic garbage collector runs in lumps: now and then a full collection (10-20 million
instructions in the fastinject server) lands in one batch and moves that sample by 5-10%.  A
collection only ever adds instructions, so a summary takes each batch size's *least* count
over the samples, which is the count without one (as long as one batch of each size missed it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from benchmarks.e2e.report import by_workload_and_server

PAIRS: tuple[tuple[str, str], ...] = (("fastinject-inject", "fastinject"),)
"""(server, reference) pairs compared on their own: injected connections vs the listening port."""

TOLERANCE = 0.05
"""The largest relative difference a compared pair may show and still count as the same cost."""


@dataclass(frozen=True)
class Sample:
    """Instructions one server executed for a small and a large batch of one workload."""

    workload: str
    server: str
    index: int
    small_calls: int
    small_instructions: int
    large_calls: int
    large_instructions: int

    @property
    def per_call(self) -> float:
        """Instructions per call, with the fixed cost of a batch cancelled out."""
        extra_calls = self.large_calls - self.small_calls
        return (self.large_instructions - self.small_instructions) / extra_calls

    @property
    def per_batch(self) -> float:
        """The fixed instructions of one batch: connections, set-up, tear-down."""
        return self.small_instructions - self.small_calls * self.per_call


@dataclass(frozen=True)
class InstructionSummary:
    """Instructions per call of one workload and server, and their ratio to the baseline's.

    ``per_call`` and ``per_batch`` come from each batch size's least count over the samples.
    ``spread`` is (max - min) / ``per_call`` of the samples' own figures: how far the same
    measurement moved when repeated, garbage collections included.  ``ratio`` is None when
    the baseline did not run.
    """

    workload: str
    server: str
    samples: int
    per_call: float
    per_message: float
    per_batch: float
    spread: float
    ratio: float | None


@dataclass(frozen=True)
class Comparison:
    """``server``'s instructions per call relative to ``reference``'s, on one workload.

    ``noise`` is the larger sample spread of the two; ``within`` says whether the difference
    is at most ``tolerance``.
    """

    workload: str
    server: str
    reference: str
    difference: float
    noise: float
    tolerance: float

    @property
    def within(self) -> bool:
        """Whether the difference is at most the tolerance, either way."""
        return abs(self.difference) <= self.tolerance


def least_counts(samples: Sequence[Sample]) -> Sample:
    """Return a sample made of each batch size's least count over ``samples`` (all alike)."""
    return dataclasses.replace(
        samples[0],
        small_instructions=min(sample.small_instructions for sample in samples),
        large_instructions=min(sample.large_instructions for sample in samples),
    )


def summarise(
    samples: Sequence[Sample], messages_per_call: Mapping[str, int], baseline: str
) -> list[InstructionSummary]:
    """Return one summary per (workload, server), in the order they were first measured."""
    grouped = by_workload_and_server(samples)
    least = {key: least_counts(group) for key, group in grouped.items()}
    summaries = []
    for (workload, server), group in grouped.items():
        per_call = least[(workload, server)].per_call
        figures = [sample.per_call for sample in group]
        base = least.get((workload, baseline))
        summaries.append(
            InstructionSummary(
                workload=workload,
                server=server,
                samples=len(group),
                per_call=per_call,
                per_message=per_call / messages_per_call[workload],
                per_batch=least[(workload, server)].per_batch,
                spread=(max(figures) - min(figures)) / per_call,
                ratio=per_call / base.per_call if base else None,
            )
        )
    return summaries


def compare(
    summaries: Sequence[InstructionSummary],
    pairs: Sequence[tuple[str, str]] = PAIRS,
    tolerance: float = TOLERANCE,
) -> list[Comparison]:
    """Return a :class:`Comparison` for every pair of ``pairs`` measured on a workload."""
    by_key = {(s.workload, s.server): s for s in summaries}
    workloads = list(dict.fromkeys(s.workload for s in summaries))
    comparisons = []
    for workload in workloads:
        for server, reference in pairs:
            measured, base = by_key.get((workload, server)), by_key.get((workload, reference))
            if measured is None or base is None:
                continue
            difference = measured.per_call / base.per_call - 1
            comparisons.append(
                Comparison(
                    workload=workload,
                    server=server,
                    reference=reference,
                    difference=difference,
                    noise=max(measured.spread, base.spread),
                    tolerance=tolerance,
                )
            )
    return comparisons


def format_count(count: float) -> str:
    """Format an instruction count with three significant digits: 616k, 1.23M, 4.56G."""
    factor, unit = next(
        ((f, u) for f, u in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if abs(count) >= f), (1.0, "")
    )
    value = count / factor
    decimals = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{decimals}f}{unit}"


def _align(rows: Sequence[Sequence[str]], left: int) -> list[str]:
    """Lay ``rows`` out in columns, the first ``left`` left-aligned, under a rule."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def _comparison_lines(comparisons: Sequence[Comparison]) -> list[str]:
    rows: list[tuple[str, ...]] = [
        ("workload", "server", "vs", "difference", "sample spread", "verdict")
    ]
    for c in comparisons:
        verdict = f"{'within' if c.within else 'OUTSIDE'} {c.tolerance:.0%}"
        rows.append(
            (c.workload, c.server, c.reference, f"{c.difference:+.2%}", f"{c.noise:.2%}", verdict)
        )
    return _align(rows, left=3)


def format_table(
    summaries: Sequence[InstructionSummary],
    comparisons: Sequence[Comparison],
    settings: Mapping[str, str],
    streaming: set[str],
    baseline: str,
) -> str:
    """Return the instructions table, then the pair comparisons.

    ``settings`` describes each workload's concurrency and batch sizes, e.g. ``4x64, 256/1024``;
    instructions per message are shown only for ``streaming`` workloads.
    """
    rows: list[tuple[str, ...]] = [
        (
            "workload",
            "server",
            "in flight, batches",
            "samples",
            "instr/call",
            "instr/msg",
            "per batch",
            "sample spread",
            f"vs {baseline}",
        )
    ]
    for s in summaries:
        rows.append(
            (
                s.workload,
                s.server,
                settings[s.workload],
                str(s.samples),
                format_count(s.per_call),
                format_count(s.per_message) if s.workload in streaming else "-",
                format_count(s.per_batch),
                f"{s.spread:.2%}",
                "-" if s.ratio is None else f"{s.ratio:.2f}x",
            )
        )
    lines = _align(rows, left=3)
    lines.append("")
    lines.append(
        "instr/call: server instructions (all threads, callgrind Ir) per call, the fixed cost of "
        "a batch\ncancelled out, from each batch size's least count over the samples (a garbage "
        "collection only\nadds).  per batch: that fixed cost.  sample spread: (max - min) / "
        "instr/call of the samples' own\nfigures, garbage collections included.  Instructions "
        "are not time: compare with the throughput\ntable, do not replace it."
    )
    if comparisons:
        lines.append("")
        lines.extend(_comparison_lines(comparisons))
    return "\n".join(lines)
