"""The CPU split's bookkeeping: which profile entries count where, and what is left out."""

from __future__ import annotations

import pytest
from benchmarks.cpu_split import categorise, report
from benchmarks.e2e.workloads import WORKLOADS_BY_NAME


def entry(tottime: float) -> tuple[int, int, float, float, dict[object, object]]:
    """A pstats row with ``tottime`` seconds of own time."""
    return (1, 1, tottime, tottime, {})


def test_entries_are_split_by_where_their_code_lives() -> None:
    """h2, fastinject, the interop servicer (inside fastinject) and asyncio land in their rows."""
    totals = categorise({
        ("/venv/site-packages/h2/connection.py", 1, "receive_data"): entry(1.0),
        ("/venv/site-packages/hpack/hpack.py", 1, "decode"): entry(0.5),
        ("/repo/src/fastinject/protocol.py", 1, "_scan"): entry(2.0),
        ("/repo/src/fastinject/interop/servicer.py", 1, "UnaryCall"): entry(0.25),
        ("~", 0, "<built-in method FromString>"): entry(0.25),
        ("/usr/lib/python3.11/asyncio/base_events.py", 1, "_run_once"): entry(0.125),
        ("~", 0, "<method 'send' of '_socket.socket' objects>"): entry(0.0625),
        ("~", 0, "<built-in method builtins.len>"): entry(0.03125),
    })
    assert totals == {
        "h2 (h2, hpack, hyperframe)": 1.5,
        "fastinject": 2.0,
        "application (servicer, protobuf)": 0.5,
        "asyncio": 0.125,
        "kernel I/O (send, recv)": 0.0625,
        "other (builtins, stdlib)": 0.03125,
    }


def test_waiting_in_epoll_is_not_cpu_time() -> None:
    """Time blocked in epoll.poll is idle, not work."""
    totals = categorise({("~", 0, "<method 'poll' of 'select.epoll' objects>"): entry(9.0)})
    assert totals == {}


def test_report_gives_microseconds_per_call_and_shares() -> None:
    """Each row shows its microseconds per call and its share of the total."""
    text = report(WORKLOADS_BY_NAME["unary-100B"], 1000,
                  {"fastinject": 75e-6, "h2 (h2, hpack, hyperframe)": 25e-6})
    lines = text.splitlines()
    assert lines[0] == "unary-100B (1,000 calls, 100.0 us/call profiled)"
    fastinject_row = next(line for line in lines if line.strip().startswith("fastinject"))
    assert fastinject_row.split()[-3:] == ["75.0", "us", "75.0%"]
    assert pytest.approx(25.0) == float(
        next(line for line in lines if "h2 (" in line).split()[-3]
    )
