"""Goodput of a grpcio client while another connection sends costly compressed messages.

Two attacks (issue 12), each from its own process over a raw HTTP/2 connection (``h2``):

* ``gzip-members``: every request is a gzip message of as many one-byte gzip members as fit in
  4 MiB (grpc core inflates only the first member and refuses the rest);
* ``gzip-bomb``: every request is 4 KiB of gzip that inflates to just under the 4 MiB limit;
* ``plain-upload``: the control, 4 MiB requests that are not compressed.

The attacker keeps a few such calls in flight (``ATTACKS``) and reconnects whenever the server ends
its connection.  Meanwhile a grpcio client (``--concurrency`` calls in flight on one channel)
calls a unary echo of 100 bytes.  Goodput is its call rate under attack over its rate in the
same run without attack; p99 is its latency under attack.

    python -m benchmarks.compression_attacks [--server fastinject|grpc.aio] [--seconds 5]
        [--attacks gzip-bomb,gzip-members,plain-upload] [--server-src DIR]
        [--setting name=value ...]

``--server-src`` runs the server from another checkout's ``src`` (to compare with a version
before a change); ``--setting`` passes ``fastinject.Server`` keyword settings (grpcio
options to grpc.aio).
Figures are wall-clock: on a shared host, compare runs made back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings

SERVE = """
import asyncio, sys
import fastinject

async def echo(request, context):
    return request

async def main():
    server = fastinject.Server(**SETTINGS)
    server.add_registered_method_handlers(
        "bench.Echo", {"Unary": fastinject.unary_unary_rpc_method_handler(echo)}
    )
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""

SERVE_GRPC_AIO = """
import asyncio
import grpc

async def echo(request, context):
    return request

async def main():
    server = grpc.aio.server(options=[(key, value) for key, value in SETTINGS.items()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(echo)}),))
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
"""
SERVERS = {"fastinject": SERVE, "grpc.aio": SERVE_GRPC_AIO}

LIMIT = 4 * 1024 * 1024


def gzip_members() -> bytes:
    """A 4 MiB gzip message made of one-byte members."""
    member = zlib.compress(b"x", wbits=31)
    return member * (LIMIT // len(member))


def plain_upload() -> bytes:
    """The control: 4 MiB that are not compressed (the same bytes on the wire as gzip-members)."""
    return bytes(LIMIT - 1024)


def gzip_bomb() -> bytes:
    """4 KiB of gzip inflating to just under the 4 MiB limit."""
    return zlib.compress(bytes(LIMIT - 1024), 9, wbits=31)


ATTACKS: dict[str, tuple[Callable[[], bytes], int]] = {
    "gzip-members": (gzip_members, 4),  # 4 x 4 MiB in flight: under max_partial_message_bytes
    "gzip-bomb": (gzip_bomb, 64),
    "plain-upload": (plain_upload, 4),
}
"""Each attack: its request payload and how many calls it keeps in flight."""


def _attack(port: int, payload: bytes, streams: int, compressed: bool) -> None:
    """The attacker process: keep ``streams`` calls in flight, forever."""
    message = bytes([compressed]) + len(payload).to_bytes(4, "big") + payload
    headers = [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/bench.Echo/Unary"),
        (b":authority", b"localhost"), (b"content-type", b"application/grpc"),
        (b"te", b"trailers"), (b"grpc-encoding", b"gzip" if compressed else b"identity"),
    ]
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(0.05)  # never wait for the server with data ready to send
            conn = h2.connection.H2Connection(config=config)
            conn.initiate_connection()
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
            pending: dict[int, memoryview] = {}
            while True:
                while len(pending) < streams:
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(stream_id, headers)
                    pending[stream_id] = memoryview(message)
                for stream_id, left in list(pending.items()):
                    while left:
                        size = min(len(left), conn.local_flow_control_window(stream_id),
                                   conn.max_outbound_frame_size)
                        if size <= 0:
                            break
                        conn.send_data(stream_id, left[:size], end_stream=size == len(left))
                        left = left[size:]
                    pending[stream_id] = left
                sock.sendall(conn.data_to_send())
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                        pending.pop(event.stream_id, None)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length,
                                                       event.stream_id)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        break
                else:
                    continue
                break


async def _legitimate(target: str, seconds: float, concurrency: int) -> tuple[float, float]:
    """Calls per second and p99 latency (ms) of a grpcio client over ``seconds``."""
    latencies: list[float] = []
    failures = 0
    async with grpc.aio.insecure_channel(target) as channel:
        unary = channel.unary_unary("/bench.Echo/Unary")
        await unary(b"warm-up", timeout=30)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal failures
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    await unary(b"x" * 100, timeout=30)
                except grpc.aio.AioRpcError:
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    if failures:
        raise AssertionError(f"{failures} legitimate calls failed")
    latencies.sort()
    return len(latencies) / elapsed, latencies[int(len(latencies) * 0.99)] * 1000


def run(server_name: str, seconds: float, attacks: list[str], concurrency: int,
        server_src: Path, settings: dict[str, object]) -> None:
    """Start the server, measure the baseline and each attack, print one line per attack."""
    env = dict(os.environ, PYTHONPATH=str(server_src))
    code = SERVERS[server_name].replace("SETTINGS", repr(settings))
    server = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        target = f"127.0.0.1:{port}"
        base_rate, base_p99 = asyncio.run(_legitimate(target, seconds, concurrency))
        print(f"baseline          {base_rate:8.0f} calls/s  p99 {base_p99:7.2f} ms")
        for name in attacks:
            payload, streams = ATTACKS[name]
            attacker = multiprocessing.Process(
                target=_attack, args=(port, payload(), streams, name != "plain-upload"),
                daemon=True,
            )
            attacker.start()
            time.sleep(1.0)  # let the attack reach its steady state
            try:
                rate, p99 = asyncio.run(_legitimate(target, seconds, concurrency))
            finally:
                attacker.kill()
                attacker.join()
            print(f"{name:17} {rate:8.0f} calls/s  p99 {p99:7.2f} ms  "
                  f"goodput {100 * rate / base_rate:5.1f}%")
    finally:
        server.kill()
        server.wait()


def main() -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=SERVERS, default="fastinject")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--concurrency", type=int, default=8, help="grpcio calls in flight")
    parser.add_argument("--server-src", type=Path,
                        default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    settings: dict[str, object] = {name: float(value) if "." in value else int(value)
                for name, value in (item.split("=", 1) for item in args.setting)}
    run(args.server, args.seconds, args.attacks.split(","), args.concurrency, args.server_src,
        settings)


if __name__ == "__main__":
    main()
