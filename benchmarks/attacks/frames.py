"""Raw HTTP/2 frames for attackers: bytes built by hand, header blocks with ``hpack``."""

from __future__ import annotations

import struct

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x2, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9,
)
END_STREAM = 0x1
END_HEADERS = 0x4
CANCEL = 0x8
UNKNOWN_TYPE = 0xFA
"""A frame type no HTTP/2 implementation knows (RFC 9113 5.5: must be ignored)."""

UNARY_PATH = b"/grpc.testing.TestService/UnaryCall"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id)
    return header + payload


def grpc_message_prefix(length: int, compressed: bool = False) -> bytes:
    """The 5-byte prefix of a gRPC message declaring ``length`` bytes."""
    return struct.pack(">BI", int(compressed), length)


def request_headers(path: bytes = UNARY_PATH, scheme: bytes = b"http") -> list[tuple[bytes, bytes]]:
    """The headers of a well-formed gRPC request."""
    return [
        (b":method", b"POST"),
        (b":scheme", scheme),
        (b":path", path),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


class HeaderBlocks:
    """HPACK-encodes request header blocks for one connection (its own dynamic table)."""

    def __init__(self) -> None:
        self._encoder = hpack.Encoder()

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The header block of ``headers`` (indexed after the first time)."""
        return bytes(self._encoder.encode(headers))


def parse_frames(buffer: bytearray) -> list[tuple[int, int, int, bytes]]:
    """Remove the whole frames at the start of ``buffer``; ``(type, flags, stream, payload)``."""
    frames = []
    offset = 0
    while len(buffer) - offset >= 9:
        length = int.from_bytes(buffer[offset : offset + 3], "big")
        if len(buffer) - offset < 9 + length:
            break
        kind, flags, stream_id = struct.unpack_from(">BBI", buffer, offset + 3)
        frames.append((kind, flags, stream_id & 0x7FFFFFFF,
                       bytes(buffer[offset + 9 : offset + 9 + length])))
        offset += 9 + length
    del buffer[:offset]
    return frames
