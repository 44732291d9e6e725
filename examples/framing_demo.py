"""Demo of fastinject's gRPC message framing core.

Frames a few messages the way a gRPC peer writes them, cuts the byte stream at random points
(as HTTP/2 DATA frames would), feeds the pieces to a Deframer and checks that every message
comes back whole; then shows the size limit firing on a header alone, and measures throughput.

Run with ``python examples/framing_demo.py``.
"""

from __future__ import annotations

import random
import time

from fastinject import framing
from fastinject.errors import MessageTooLargeError


def round_trip() -> None:
    """Frame, cut at random and deframe a few messages; check they come back intact."""
    payloads = [b"hello", b"", "gRPC \u2713".encode(), random.Random(1).randbytes(100_000)]
    wire = framing.frame_messages(payloads)
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(wire)), 25))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]

    deframer = framing.Deframer()
    received = [message for chunk in chunks for message in deframer.feed(chunk)]
    deframer.close()
    if [payload for payload, _ in received] != payloads:
        raise SystemExit("framing demo: messages came back changed")
    print(
        f"round trip: {len(payloads)} messages, {len(wire):,} bytes on the wire, "
        f"{len(chunks)} chunks -> all received intact"
    )


def limit() -> None:
    """Show the deframer refusing an oversized message from its 5-byte header alone."""
    header = framing.frame_message(bytes(2048))[:5]
    try:
        framing.Deframer(max_message_length=1024).feed(header)
    except MessageTooLargeError as exc:
        print(f"size limit: rejected from the header alone: {exc} -> {exc.status.name}")
    else:
        raise SystemExit("framing demo: the size limit did not fire")


def throughput() -> None:
    """Deframe 200,000 messages of 100 bytes fed in 16 KiB chunks and report the rate."""
    count = 200_000
    wire = memoryview(framing.frame_messages([b"x" * 100] * count))
    chunks = [wire[i : i + 16384] for i in range(0, len(wire), 16384)]
    deframer = framing.Deframer()
    start = time.perf_counter()
    received = sum(len(deframer.feed(chunk)) for chunk in chunks)
    elapsed = time.perf_counter() - start
    assert received == count
    print(f"throughput: {count / elapsed / 1e6:.1f} million 100-byte messages/s")


def main() -> None:
    """Run the three parts of the demo."""
    print(f"fastinject framing implementation: {framing.IMPLEMENTATION}")
    round_trip()
    limit()
    throughput()


if __name__ == "__main__":
    main()
