"""The worker pool's costs and gains: ``python -m benchmarks.workers`` (Linux, h2load).

Measures, against ``fastinject serve`` running ``tests/workers/pid_app.py``:

1. **supervisor CPU per handed-off connection**: the supervisor's own CPU time (``/proc``,
   not its workers') across 10,000 connections opened and closed, divided by 10,000; and its
   open fds afterwards, which must be back to what they were (no fd kept per connection);
2. **added latency of a new connection**: a new grpcio channel's connect + first call, with
   ``--workers 1`` (the process accepts itself) and ``--workers 2`` (accept, pass the socket
   over a Unix socket, inject), medians of many;
3. **throughput** of small unary calls (h2load, 8 connections x 32 streams) with 1 and 2
   workers, and the CPU per call of all server processes, from which the scaling on more
   cores is argued (``calls/s <= cores / CPU per call``).

Wall-clock figures on a shared machine are noisy: label them "loaded host" when quoting.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.e2e import h2load, procstat

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "tests"))

from workers.supervised import Supervised, channel, pid_of  # noqa: E402


def _own_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` itself (not its children)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _serve(workers: int) -> tuple[Supervised, str]:
    supervised = Supervised(["pid_app:make_server", "--bind", "127.0.0.1:0",
                             "--workers", str(workers)])
    address = supervised.wait_for(r"listening on (\S+)").group(1)
    with channel(address) as chan:
        pid_of(chan, wait_for_ready=True)
    return supervised, address


def handoff_cost(connections: int) -> None:
    """Supervisor CPU per connection, and its fds after ``connections`` connections."""
    supervised, address = _serve(2)
    try:
        host, _, port = address.rpartition(":")
        fds_before = _fds(supervised.pid)
        cpu_before = _own_cpu_seconds(supervised.pid)
        started = time.perf_counter()
        for _ in range(connections):
            with socket.create_connection((host, int(port))):
                pass
        with channel(address) as chan:  # answered => every earlier connection was handed off
            pid_of(chan)
        elapsed = time.perf_counter() - started
        cpu = _own_cpu_seconds(supervised.pid) - cpu_before
        for _ in range(200):
            if _fds(supervised.pid) == fds_before:
                break
            time.sleep(0.05)
        print(f"handoff: {connections} connections in {elapsed:.2f} s; supervisor CPU "
              f"{cpu * 1e6 / connections:.1f} us per connection; fds before {fds_before}, "
              f"after {_fds(supervised.pid)}")
    finally:
        supervised.kill()


def new_connection_latency(samples: int) -> None:
    """Median connect + first call on a new channel, with 1 and 2 workers."""
    for workers in (1, 2):
        supervised, address = _serve(workers)
        try:
            times = []
            for _ in range(samples):
                started = time.perf_counter()
                with channel(address) as chan:
                    pid_of(chan)
                times.append(time.perf_counter() - started)
            print(f"new connection + first call, --workers {workers}: median "
                  f"{statistics.median(times) * 1e3:.3f} ms, p90 "
                  f"{statistics.quantiles(times, n=10)[-1] * 1e3:.3f} ms ({samples} samples)")
        finally:
            supervised.kill()


def throughput(calls: int) -> None:
    """h2load calls/s and server CPU per call with 1 and 2 workers."""
    with tempfile.TemporaryDirectory() as scratch:
        body = Path(scratch) / "empty.grpc"
        body.write_bytes(b"\x00\x00\x00\x00\x00")  # one empty gRPC message
        for workers in (1, 2):
            supervised, address = _serve(workers)
            try:
                port = int(address.rpartition(":")[2])
                cpu_before = procstat.cpu_seconds(supervised.pid)
                result = h2load.run(
                    h2load.command(port, "/pid.Pid/Get", body, calls, 8, 32), timeout_s=600
                )
                cpu = procstat.cpu_seconds(supervised.pid) - cpu_before
                trouble = h2load.problems(result, calls, 5)
                print(f"throughput, --workers {workers}: {calls / result.elapsed_s:,.0f} calls/s; "
                      f"server CPU {cpu * 1e6 / calls:.1f} us per call"
                      f"{'; PROBLEMS: ' + '; '.join(trouble) if trouble else ''}")
            finally:
                supervised.kill()


def main() -> None:
    """Run the three measurements."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    handoff_cost(args.connections)
    new_connection_latency(args.samples)
    throughput(args.calls)


if __name__ == "__main__":
    main()
