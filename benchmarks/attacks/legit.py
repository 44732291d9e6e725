"""The legitimate client, run as its own process so the attacker does not slow it down.

``python -m benchmarks.attacks.legit --port P --seconds S [--rate R] [--root-cert PEM]``
prints ``start <monotonic time>`` once connected, then calls UnaryCall (100-byte request and
response) at a steady rate (open loop, at most ``--in-flight`` calls at once, a 2 s deadline
each) for ``S`` seconds, and prints one JSON line: ``[[start, latency, ok], ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc  # type: ignore[import-untyped,unused-ignore]

from fastinject.interop import messages_pb2, test_pb2_grpc

CALL_DEADLINE_S = 2.0
PAYLOAD = 100


async def run(port: int, seconds: float, rate: float, in_flight: int,
              root_cert: bytes | None) -> list[tuple[float, float, bool]]:
    """Call for ``seconds`` at ``rate`` calls/s; every call's (start, latency, ok)."""
    target = f"localhost:{port}"
    channel = (grpc.aio.insecure_channel(target) if root_cert is None else
               grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_cert)))
    request = messages_pb2.SimpleRequest(
        response_size=PAYLOAD, payload=messages_pb2.Payload(body=b"x" * PAYLOAD)
    )
    calls: list[tuple[float, float, bool]] = []
    slots = asyncio.Semaphore(in_flight)
    async with channel:
        stub = test_pb2_grpc.TestServiceStub(channel)  # type: ignore[no-untyped-call]
        await stub.UnaryCall(request, timeout=10, wait_for_ready=True)

        async def one(start: float) -> None:
            try:
                await stub.UnaryCall(request, timeout=CALL_DEADLINE_S)
                ok = True
            except grpc.RpcError:
                ok = False
            finally:
                slots.release()
            calls.append((start, time.monotonic() - start, ok))

        begin = time.monotonic()
        print(f"start {begin}", flush=True)
        tasks = set()
        sent = 0
        while (now := time.monotonic()) < begin + seconds:
            due = begin + sent / rate
            if now < due:
                await asyncio.sleep(due - now)
                continue
            sent += 1
            if slots.locked():  # the server is too slow: this call is lost to the attack
                calls.append((now, CALL_DEADLINE_S, False))
                continue
            await slots.acquire()
            task = asyncio.create_task(one(now))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
    return calls


def main() -> None:
    """Parse the command line, call, print the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--root-cert", help="PEM root certificate: call over TLS")
    args = parser.parse_args()
    root = None
    if args.root_cert:
        with open(args.root_cert, "rb") as pem:
            root = pem.read()
    calls = asyncio.run(run(args.port, args.seconds, args.rate, args.in_flight, root))
    print(json.dumps(calls), flush=True)


if __name__ == "__main__":
    main()
