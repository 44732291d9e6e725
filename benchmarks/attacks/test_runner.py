"""Tests of the attack runner's bookkeeping; run with ``python -m pytest benchmarks/attacks``.

They check what the table depends on: calls are counted in the right window, the ratios and
the RSS/CPU figures come from the right samples, the verdicts follow the targets, attacks
respect their budgets and count what they send and see.  No attack runs against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os

import pytest
from benchmarks.attacks import catalog, cli, measure
from benchmarks.attacks import frames as f
from benchmarks.attacks.measure import (
    AttackerView,
    Call,
    ClientFigures,
    Outcome,
    ServerSample,
    Window,
)

MIB = measure.MIB


def test_percentile_is_nearest_rank() -> None:
    """p99 of 1..100 is 99, of one value that value, of nothing NaN."""
    assert measure.percentile([float(v) for v in range(100, 0, -1)], 0.99) == 99.0
    assert measure.percentile([0.5], 0.99) == 0.5
    assert math.isnan(measure.percentile([], 0.99))


def test_client_figures_count_only_calls_started_in_the_window() -> None:
    """Goodput is successful calls started inside the window per second; failures apart."""
    calls = [
        Call(9.9, 0.1, True),  # before
        Call(10.0, 0.2, True),
        Call(11.0, 0.4, True),
        Call(11.5, 2.0, False),
        Call(12.0, 0.1, True),  # at the end: outside
    ]
    figures = measure.client_figures(calls, Window(10.0, 12.0))
    assert figures == ClientFigures(ok=2, failed=1, goodput=1.0, p99=0.4)


def sample(rss_mib: float, peak_mib: float, fds: int, cpu: float) -> ServerSample:
    """A server sample in MiB."""
    return ServerSample(int(rss_mib * MIB), int(peak_mib * MIB), fds, cpu)


def outcome(server: str = "fastinject", goodput: float = 190.0, peak_mib: float = 110.0,
            attack: str = "ping-flood") -> Outcome:
    """An outcome whose baseline is 200 calls/s and p99 10 ms, RSS 100 MiB before."""
    return Outcome(
        attack=attack,
        server=server,
        baseline=ClientFigures(1000, 0, 200.0, 0.010),
        attacked=ClientFigures(950, 3, goodput, 0.030),
        before=sample(100, 100, 20, 5.0),
        after=sample(104, peak_mib, 30, 7.5),
        settled=sample(101, peak_mib, 21, 8.0),
        seconds=5.0,
        attacker=AttackerView(connections=3, goaways={0xB: 2}),
    )


def test_outcome_figures_come_from_the_right_samples() -> None:
    """Goodput %, p99 ratio, RSS growth (peak during less RSS before), CPU % and fds left."""
    result = outcome()
    assert result.goodput_percent == pytest.approx(95.0)
    assert result.p99_ratio == pytest.approx(3.0)
    assert result.rss_growth_mib == pytest.approx(10.0)
    assert result.cpu_percent == pytest.approx(50.0)
    assert result.fds_left == 1
    assert result.meets_target


@pytest.mark.parametrize(
    ("goodput", "peak_mib", "expected"),
    [(190.0, 110.0, "ok"), (170.0, 110.0, "MISS"), (190.0, 170.0, "MISS")],
)
def test_verdict_follows_the_targets(goodput: float, peak_mib: float, expected: str) -> None:
    """Under 90% goodput or 64 MiB growth or more is a miss."""
    assert measure.verdict(outcome(goodput=goodput, peak_mib=peak_mib), [], "fastinject") == \
        expected


def test_ours_behind_the_better_peer_is_reported() -> None:
    """Ours meeting the targets but well behind the better peer is 'behind'."""
    ours = outcome(goodput=182.0)  # 91%
    peers = [outcome("grpc.aio", goodput=150.0), outcome("grpc-js", goodput=200.0)]
    assert measure.verdict(ours, peers, "fastinject") == "behind"
    assert measure.verdict(outcome(goodput=192.0), peers, "fastinject") == "ok"
    assert measure.verdict(peers[1], [ours], "fastinject") == "ok"


def test_report_has_a_row_per_outcome_and_the_attackers_view() -> None:
    """Every (attack, server) pair gets a row naming what the attacker saw."""
    rows = cli.report([outcome(), outcome("grpc.aio"), outcome(attack="churn")])
    lines = rows.splitlines()
    assert lines[0] == measure.HEADER
    assert len(lines) == 5  # header, three rows, the legend
    assert "3 conns, GOAWAY ENHANCE_YOUR_CALM x2" in lines[1]


def test_proc_status_fields_are_read_in_bytes() -> None:
    """VmRSS and VmHWM of /proc/<pid>/status, and this process's own sample."""
    fields = measure.read_status("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert fields == {"VmHWM": 2 * MIB, "VmRSS": MIB}
    own = measure.sample_server(os.getpid())
    assert 0 < own.rss <= own.peak_rss
    assert own.fds > 0


def test_frames_are_parsed_across_reads() -> None:
    """A frame split over two reads is returned once whole; the rest stays buffered."""
    wire = f.frame(f.PING, 0, 0, b"12345678") + f.frame(f.GOAWAY, 0, 0, bytes(8))
    buffer = bytearray(wire[:20])
    assert f.parse_frames(buffer) == [(f.PING, 0, 0, b"12345678")]
    buffer += wire[20:]
    assert f.parse_frames(buffer) == [(f.GOAWAY, 0, 0, bytes(8))]
    assert buffer == b""


def test_attack_names_are_unique_and_described() -> None:
    """Every attack has its own name and a description for --list."""
    names = [attack.name for attack in catalog.ATTACKS]
    assert len(set(names)) == len(names)
    assert all(attack.description for attack in catalog.ATTACKS)


def test_unknown_attack_name_is_refused() -> None:
    """--attacks with a name that is not in the catalog is an error naming it."""
    with pytest.raises(SystemExit):
        cli.parse(["--attacks", "ping-flood,no-such-attack"])
    assert cli.parse(["--attacks", "churn"]).attacks == ["churn"]


class Sink:
    """A loopback server that keeps everything it reads until each peer leaves."""

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting  # sent to each peer at once, as a server's SETTINGS
        self.received = bytearray()
        self.open = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; return the port."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        writer.write(self.greeting)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.received.extend(data)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        self.open -= 1

    async def stop(self) -> None:
        """Wait until every peer left, then stop listening."""
        async with asyncio.timeout(10):
            while self.open:
                await asyncio.sleep(0.01)
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_flood_stops_at_its_budget_and_counts_what_it_sent() -> None:
    """Against a sink that reads everything, a flood sends exactly its (scaled) budget."""
    sink = Sink()
    port = await sink.start()
    view = AttackerView()
    loop = asyncio.get_running_loop()
    target = catalog.Target(port, False, loop.time() + 10.0, 0.002, view)  # 1,000 PINGs
    await catalog.ping_flood(target)
    await sink.stop()
    assert view.frames == target.budget(500_000) == 1000
    assert view.connections == 1
    sent = len(f.PREFACE) + 9 + 1000 * 17
    async with asyncio.timeout(10):
        while len(sink.received) < sent:
            await asyncio.sleep(0.01)
    assert len(sink.received) == sent


async def test_an_attack_stops_at_its_deadline() -> None:
    """Silent slowloris connections are held until the deadline, then dropped.

    They send nothing at all, not even an ACK of the server's SETTINGS.
    """
    sink = Sink(greeting=f.frame(f.SETTINGS, 0, 0))
    port = await sink.start()
    view = AttackerView()
    loop = asyncio.get_running_loop()
    target = catalog.Target(port, False, loop.time() + 0.5, 0.01, view)  # 5 connections
    async with asyncio.timeout(5):
        await catalog.slowloris_silent(target)
    assert view.connections == 5
    assert view.closed_by_server == 0
    assert loop.time() >= target.deadline
    await sink.stop()
    assert sink.received == b""
