"""Connection churn in one process: fds, asyncio tasks and RSS before and after N cycles.

``python -m benchmarks.attacks.churn [--cycles 20000]`` serves the interop TestService from a
fastinject server in this process over four listeners (plaintext port, TLS port, injected
plaintext, injected TLS) and, for each, runs the cycles one after another, each leaving in one
of five ways: after a complete UnaryCall, right after connecting (and the TLS handshake),
halfway through the HTTP/2 preface, with a call still open (socket aborted), and without
sending anything.  It prints the process's open fds, asyncio tasks and RSS before the cycles
and once the server has let go of every connection (or after 10 s).  The bounded version is
``tests/hostile/test_churn.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
import time
from pathlib import Path

from benchmarks.attacks import frames as f
from benchmarks.attacks.measure import MIB, read_status
from benchmarks.e2e.certificate import write_self_signed

import fastinject
from fastinject.interop import messages_pb2
from fastinject.interop.servicer import TestServiceServicer, add_test_service

KINDS = 5
SETTLE_S = 10.0


def process_state() -> tuple[int, int, float]:
    """Open fds, asyncio tasks (this one excluded) and RSS in MiB of this process."""
    rss = read_status(Path("/proc/self/status").read_text())["VmRSS"] / MIB
    return len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks()) - 1, rss


def _call_bytes() -> bytes:
    request = messages_pb2.SimpleRequest(
        response_size=100, payload=messages_pb2.Payload(body=b"x" * 100)
    ).SerializeToString()
    block = f.HeaderBlocks().encode(f.request_headers())
    return (f.PREFACE + f.frame(f.SETTINGS, 0, 0) + f.frame(f.HEADERS, f.END_HEADERS, 1, block)
            + f.frame(f.DATA, f.END_STREAM, 1, f.grpc_message_prefix(len(request)) + request))


CALL = _call_bytes()


async def cycle(port: int, context: ssl.SSLContext | None, kind: int) -> bool:
    """One connect/close cycle of ``kind``; True if it completed a call."""
    if kind == 4:
        with socket.create_connection(("127.0.0.1", port)):
            return False
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None
    )
    try:
        if kind == 1:
            return False
        if kind == 2:
            writer.write(f.PREFACE[:12])
            await writer.drain()
            return False
        writer.write(CALL)
        await writer.drain()
        if kind == 3:
            writer.transport.abort()
            return False
        buffer = bytearray()
        async with asyncio.timeout(10):
            while data := await reader.read(65536):
                buffer += data
                for kind_, flags, stream_id, _ in f.parse_frames(buffer):
                    if kind_ == f.HEADERS and stream_id == 1 and flags & f.END_STREAM:
                        return True
        return False
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def _inject(listener: socket.socket, injector: fastinject.ConnectionInjector) -> None:
    loop = asyncio.get_running_loop()
    while True:
        sock, _ = await loop.sock_accept(listener)
        injector.inject_connection(sock)


async def run(cycles: int, work_dir: Path) -> list[str]:
    """The report lines for ``cycles`` cycles over each of the four listeners."""
    cert, key = write_self_signed(work_dir)
    tls = fastinject.ServerCredentials.ssl([(key.read_bytes(), cert.read_bytes())])
    insecure = fastinject.ServerCredentials.insecure()
    server = fastinject.Server()
    add_test_service(TestServiceServicer(), server)
    ports = {
        "plaintext": server.add_insecure_port("127.0.0.1:0"),
        "tls": server.add_secure_port("127.0.0.1:0", tls),
    }
    await server.start()
    accepting = []
    for name, credentials in (("injected", insecure), ("injected-tls", tls)):
        listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        listener.setblocking(False)
        ports[name] = listener.getsockname()[1]
        accepting.append((listener, asyncio.ensure_future(
            _inject(listener, server.create_connection_injector(credentials)))))
    client = ssl.create_default_context(cafile=str(cert))
    client.set_alpn_protocols(["h2"])
    lines = [f"{'transport':<14} {'cycles':>7} {'calls':>6} {'s':>6}   "
             f"{'fds before/after':>16} {'tasks before/after':>18} {'RSS MiB before/after':>20}"]
    try:
        for name, port in ports.items():
            context = client if name.endswith("tls") else None
            for kind in range(KINDS):  # warm-up: one-time allocations are not leaks
                await cycle(port, context, kind)
            await asyncio.sleep(0.5)
            before = process_state()
            started = time.monotonic()
            calls = 0
            for index in range(cycles):
                calls += await cycle(port, context, index % KINDS)
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + SETTLE_S
            while (after := process_state())[:2] != before[:2] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            lines.append(
                f"{name:<14} {cycles:>7} {calls:>6} {elapsed:>6.1f}   "
                f"{f'{before[0]}/{after[0]}':>16} {f'{before[1]}/{after[1]}':>18} "
                f"{f'{before[2]:.1f}/{after[2]:.1f}':>20}"
            )
    finally:
        for listener, task in accepting:
            task.cancel()
            listener.close()
        await server.stop(None)
    return lines


def main() -> None:
    """Parse the command line, churn, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20_000,
                        help="cycles per transport (default 20,000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fastinject-churn-") as tmp:
        print("\n".join(asyncio.run(run(args.cycles, Path(tmp)))))


if __name__ == "__main__":
    main()
