"""Client streaming as grpcio sends it: ``python -m benchmarks.paced_stream``.

The end-to-end harness drives client streaming with h2load, which posts a prepared body in
16 KiB DATA frames: a read carries ~156 messages and the cost of a read is shared by them.  A
grpcio (or grpc-go) client writes each message as the application yields it, in a DATA frame
of its own, so a server typically reads one message at a time and pays its whole read path
(event loop wake-up, frame walk, handler wake-up, flow-control credit) per message.

This runs the harness's servers (``benchmarks.e2e.servers``, pinned to ``--server-cpu``) and
makes grpcio ``StreamingInputCall`` calls of ``--messages`` 100-byte requests from this
process (pinned to ``--client-cpu``), rounds alternating between servers, and reports the
server CPU per message (``/proc``), median of the rounds, and its ratio to grpc-js's.  CPU per
message is the figure: the rate is the client's.  Wall-clock figures on a shared machine are
noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Iterator, Sequence

import grpc
from benchmarks.e2e import runner
from benchmarks.e2e.servers import SERVER_ENTRIES_BY_NAME, ServerProcess

from fastinject.interop import messages_pb2, test_pb2_grpc

DEFAULT_SERVERS = ("fastinject", "fastinject-inject", "grpc.aio", "grpc-js")
PAYLOAD = b"x" * 100


def _requests(count: int) -> Iterator[messages_pb2.StreamingInputCallRequest]:
    request = messages_pb2.StreamingInputCallRequest(payload=messages_pb2.Payload(body=PAYLOAD))
    for _ in range(count):
        yield request


def cpu_per_message(server: ServerProcess, messages: int) -> float:
    """Server CPU seconds per message of one call of ``messages`` requests (after a warm-up)."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = test_pb2_grpc.TestServiceStub(channel)
        stub.StreamingInputCall(_requests(1000))
        before = server.cpu_seconds()
        reply = stub.StreamingInputCall(_requests(messages))
        used = server.cpu_seconds() - before
    if reply.aggregated_payload_size != len(PAYLOAD) * messages:
        raise SystemExit(f"{server.name}: wrong aggregated size {reply.aggregated_payload_size}")
    return used / messages


def main(argv: Sequence[str] | None = None) -> None:
    """Measure every server and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paced_stream", description=__doc__)
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help=f"comma-separated (default {','.join(DEFAULT_SERVERS)})")
    parser.add_argument("--messages", type=int, default=20_000, help="requests per call")
    parser.add_argument("--rounds", type=int, default=3, help="calls per server (default 3)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the servers are pinned to")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU this client is pinned to")
    args = parser.parse_args(argv)
    entries = tuple(SERVER_ENTRIES_BY_NAME[name.strip()] for name in args.servers.split(","))
    os.sched_setaffinity(0, {args.client_cpu})
    options = runner.Options(
        servers=entries, workloads=(), rounds=args.rounds, duration_s=0.0, requests=None,
        warmup_s=0.0, server_cpu=args.server_cpu, client_cpu=args.client_cpu,
    )
    samples: dict[str, list[float]] = {entry.name: [] for entry in entries}
    with runner.session(options) as started:
        for index in range(args.rounds):
            for name, server in started.servers.items():
                samples[name].append(cpu_per_message(server, args.messages))
                print(f"  round {index + 1}/{args.rounds} {name}: "
                      f"{samples[name][-1] * 1e6:.1f} us server CPU per message", flush=True)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = medians.get("grpc-js")
    print(f"\n{args.messages:,} x 100-byte requests per call, one DATA frame each (grpcio client)")
    print(f"{'server':<18} {'CPU/message':>12} {'vs grpc-js':>11}")
    for name, median in medians.items():
        ratio = f"{median / baseline:.2f}x" if baseline else "-"
        print(f"{name:<18} {median * 1e6:>9.1f} us {ratio:>11}")


if __name__ == "__main__":
    main()
