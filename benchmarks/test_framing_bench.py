"""Micro-benchmarks of the gRPC framing core, Cython and pure Python side by side.

Run on demand (never part of the test run)::

    pytest benchmarks/test_framing_bench.py

pytest-benchmark prints its usual timing table; after it, a summary gives throughput
(messages/s or GB/s, from the median round) and the cython/python ratio of each case.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

CHUNK = 16 * 1024
SMALL_SIZE = 100
SMALL_COUNT = 10_000
LARGE_SIZE = 4 * 1024 * 1024
LARGE_COUNT = 4
MODULES = {"python": "fastinject._framing_py", "cython": "fastinject._framing"}


@dataclass
class Result:
    """Throughput of one benchmark case for one implementation."""

    case: str
    unit: str
    amount: float  # messages or gigabytes handled per round
    median: float  # seconds per round

    @property
    def rate(self) -> float:
        """Amount per second."""
        return self.amount / self.median


_results: dict[tuple[str, str], Result] = {}


@pytest.fixture(scope="module", params=list(MODULES))
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The implementation being measured."""
    disabled = os.environ.get("FASTINJECT_NO_EXTENSIONS", "") not in ("", "0")
    if request.param == "cython" and disabled:
        pytest.skip("FASTINJECT_NO_EXTENSIONS is set")
    return importlib.import_module(MODULES[request.param])


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the throughput table (and cython/python ratios) once the module is done."""
    yield
    if not _results:
        return
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    # Module teardown runs under output capture; the table is for the terminal.
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_sep("=", "framing throughput (median round)")
        reporter.write_line(f"{'case':<40} {'python':>16} {'cython':>16} {'ratio':>8}")
        for case in dict.fromkeys(case for case, _ in _results):
            py, cy = _results.get((case, "python")), _results.get((case, "cython"))
            cells = [f"{r.rate:>8,.2f} {r.unit:<7}" if r else f"{'-':>16}" for r in (py, cy)]
            ratio = f"{cy.rate / py.rate:>7.1f}x" if py and cy else f"{'-':>8}"
            reporter.write_line(f"{case:<40} {cells[0]:>16} {cells[1]:>16} {ratio}")
    _results.clear()


def _measure(
    benchmark: Any, impl: ModuleType, case: str, unit: str, amount: float, fn: Callable[[], object]
) -> None:
    benchmark.group = case
    benchmark(fn)
    if benchmark.stats is not None:  # None under --benchmark-disable
        name = "cython" if impl.__name__.endswith("._framing") else "python"
        _results[(case, name)] = Result(case, unit, amount, benchmark.stats.stats.median)


def _chunks(wire: bytes) -> list[memoryview]:
    view = memoryview(wire)
    return [view[i : i + CHUNK] for i in range(0, len(wire), CHUNK)]


def test_deframe_small_messages(benchmark: Any, impl: ModuleType) -> None:
    """Deframe 10,000 messages of 100 bytes fed in 16 KiB chunks."""
    chunks = _chunks(impl.frame_messages([b"m" * SMALL_SIZE] * SMALL_COUNT))

    def run() -> int:
        deframer = impl.Deframer()
        count = 0
        for chunk in chunks:
            count += len(deframer.feed(chunk))
        assert count == SMALL_COUNT
        return count

    _measure(
        benchmark, impl, "deframe 100 B msgs, 16 KiB chunks", "M msg/s", SMALL_COUNT / 1e6, run
    )


def test_deframe_large_messages(benchmark: Any, impl: ModuleType) -> None:
    """Deframe four 4 MiB messages fed in 16 KiB chunks."""
    chunks = _chunks(impl.frame_messages([os.urandom(LARGE_SIZE)] * LARGE_COUNT))
    total = sum(len(c) for c in chunks)

    def run() -> int:
        deframer = impl.Deframer()
        count = 0
        for chunk in chunks:
            count += len(deframer.feed(chunk))
        assert count == LARGE_COUNT
        return count

    _measure(benchmark, impl, "deframe 4 MiB msgs, 16 KiB chunks", "GB/s", total / 1e9, run)


def test_frame_messages_batch(benchmark: Any, impl: ModuleType) -> None:
    """Frame 10,000 messages of 100 bytes into one buffer with frame_messages."""
    payloads = [b"p" * SMALL_SIZE] * SMALL_COUNT
    _measure(
        benchmark,
        impl,
        "frame_messages(10,000 x 100 B)",
        "M msg/s",
        SMALL_COUNT / 1e6,
        lambda: impl.frame_messages(payloads),
    )


def test_frame_message_loop(benchmark: Any, impl: ModuleType) -> None:
    """Frame 10,000 messages of 100 bytes one frame_message call at a time."""
    payloads = [b"p" * SMALL_SIZE] * SMALL_COUNT
    frame = impl.frame_message
    _measure(
        benchmark,
        impl,
        "frame_message loop (10,000 x 100 B)",
        "M msg/s",
        SMALL_COUNT / 1e6,
        lambda: [frame(p) for p in payloads],
    )
