"""The Cython frame splitter and its Python twin serve any client bytes identically.

``ServerProtocol`` is built on ``fastinject.frames.FrameSplitter``, the Cython one when it is
compiled.  Here the same protocol is also built on the Python twin, and both are fed the same
frames (valid calls, hostile and malformed frames, in any cut and any turn budget): every
event and every byte they send must be the same.
"""

from __future__ import annotations

import importlib
import re
import struct
from typing import Any

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinject import _frames_py, frames
from fastinject.options import ServerSettings
from fastinject.protocol import ConnectionClosedByPeer, Event, ServerProtocol
from protocol.wire import (
    CONTINUATION,
    DATA,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    grpc_frame,
    raw_frame,
    request_headers,
)

END_HEADERS, PADDED = 0x4, 0x8
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + raw_frame(SETTINGS, 0, 0, b"")


def _on_base(base: type) -> type[ServerProtocol]:
    """``ServerProtocol``'s own methods on ``base`` instead of the splitter it was built on."""
    if ServerProtocol.__mro__[1] is base:
        return ServerProtocol
    own = {k: v for k, v in vars(ServerProtocol).items() if k not in ("__dict__", "__weakref__")}
    return type("ServerProtocol", (base,), own)


def _cython_splitter() -> type:
    """The compiled splitter, which feeds the compiled deframers ServerProtocol then makes."""
    if frames.IMPLEMENTATION != "cython":
        pytest.skip("FASTINJECT_NO_EXTENSIONS is set: the Cython module is not under test")
    return importlib.import_module("fastinject._frames").FrameSplitter  # type: ignore[no-any-return]


def _block(content_length: int | None = None) -> bytes:
    """A request header block from an encoder of its own (decodable in any order)."""
    extra = () if content_length is None else ((b"content-length", b"%d" % content_length),)
    return hpack.Encoder().encode(request_headers(extra=extra))


_OPS = st.lists(
    st.tuples(
        st.sampled_from([  # calls and their DATA most often, every other frame too
            "call", "call", "call", "call-ended", "call-ended", "call-continued",
            "data", "data", "data", "data", "data-end", "data-end", "data-padded", "empty-data",
            "window", "stream-window", "settings", "ack", "ping", "reset", "priority", "goaway",
            "unknown", "continuation-alone", "call-with-length", "data-large", "data-flags",
            "data-reserved-bit", "overlong",
        ]),
        st.integers(0, 7),  # which stream opened so far
        st.binary(max_size=60),  # payload material
        st.integers(0, 3),  # messages in a DATA frame
    ),
    max_size=30,
)


def _frames(ops: list[tuple[str, int, bytes, int]]) -> bytes:
    """The client's bytes for ``ops``: calls on new streams, frames on the streams opened."""
    opened: list[int] = []
    out = [PREFACE]
    for kind, which, material, count in ops:
        if not opened and not kind.startswith("call"):
            continue  # a frame on a stream never opened only ends the connection
        stream = opened[-1 - which % len(opened)] if opened else 1
        body = b"".join(grpc_frame(material[i::3]) for i in range(count)) or material
        if kind.startswith("call"):
            stream = opened[-1] + 2 if opened else 1
            opened.append(stream)
            block = _block(len(body) if kind == "call-with-length" else None)
            if kind == "call-continued":
                out += [raw_frame(HEADERS, 0, stream, block[:4]),
                        raw_frame(CONTINUATION, END_HEADERS, stream, block[4:])]
            else:
                flags = END_HEADERS | (END_STREAM if kind == "call-ended" else 0)
                out.append(raw_frame(HEADERS, flags, stream, block))
        elif kind == "data":
            out.append(raw_frame(DATA, 0, stream, body))
        elif kind == "data-end":
            out.append(raw_frame(DATA, END_STREAM, stream, body))
        elif kind == "data-large":  # beyond the small windows of some examples
            out.append(raw_frame(DATA, 0, stream, grpc_frame(material * 12)))
        elif kind == "data-flags":  # flags DATA does not define
            out.append(raw_frame(DATA, 0x2 | (which & 1), stream, body))
        elif kind == "data-reserved-bit":
            out.append(raw_frame(DATA, 0, stream | 1 << 31, body))
        elif kind == "overlong":  # over the frame size the server allows
            out.append(raw_frame(DATA, 0, stream, bytes(16_385)))
        elif kind == "data-padded":
            pad = len(material) % 5
            out.append(raw_frame(DATA, PADDED, stream, bytes((pad,)) + body + bytes(pad)))
        elif kind == "empty-data":
            out.append(raw_frame(DATA, 0, stream, b""))
        elif kind == "window":
            out.append(raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 + len(material))))
        elif kind == "stream-window":
            out.append(raw_frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", which)))
        elif kind == "settings":
            pairs = [(4, 1000 * (1 + which)), (5, 16_384 + len(material))][: count % 3]
            out.append(raw_frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", *p) for p in pairs)))
        elif kind == "ack":
            out.append(raw_frame(SETTINGS, 0x1, 0, b""))
        elif kind == "ping":
            out.append(raw_frame(PING, 0, 0, (material + bytes(8))[:8]))
        elif kind == "reset":
            out.append(raw_frame(RST_STREAM, 0, stream, struct.pack(">I", 8)))
        elif kind == "priority":
            out.append(raw_frame(PRIORITY, 0, stream, bytes(5)))
        elif kind == "goaway":
            out.append(raw_frame(GOAWAY, 0, 0, struct.pack(">II", stream, which)))
        elif kind == "unknown":
            out.append(raw_frame(0xA + which, 0, stream, material[:20]))
        else:
            out.append(raw_frame(CONTINUATION, END_HEADERS, stream, material[:10]))
    return b"".join(out)


def _serve(
    protocol: type[ServerProtocol], data: bytes, cuts: list[int], frames_per_turn: int,
    window: int,
) -> list[Any]:
    """Frames handled per receive, events (addresses masked) and output per read."""
    server = protocol(
        ServerSettings(max_frames_per_turn=frames_per_turn,
                       min_frames_per_turn=min(32, frames_per_turn),
                       initial_stream_window_size=window, max_frame_size=16_384),
        clock=lambda: 0.0,
    )
    record: list[Any] = []
    offset = 0
    for size in [*cuts, len(data)]:
        piece, offset = data[offset : offset + size], offset + size
        events: list[Event] = server.receive(piece)
        record.append(server.frames_handled)
        while server.has_backlog:
            events += server.receive(b"")
            record.append(server.frames_handled)
        for event in events:
            if isinstance(event, ConnectionClosedByPeer):  # (hpack's reasons hold addresses)
                record.append(("closed", event.error_code, re.sub(" at 0x[0-9a-f]+", "",
                                                                   event.reason)))
            else:
                record.append(event)
        record.append(server.data_to_send())
    return record


@settings(max_examples=300, deadline=None)
@given(
    ops=_OPS,
    cuts=st.lists(st.integers(1, 200), max_size=12),
    frames_per_turn=st.sampled_from([256, 8]),
    window=st.sampled_from([65_535, 300]),
)
def test_cython_and_python_splitters_serve_alike(
    ops: list[tuple[str, int, bytes, int]], cuts: list[int], frames_per_turn: int, window: int
) -> None:
    """Any frames, cuts, turn budget and window: same events, bytes out and frames per turn."""
    data = _frames(ops)
    cython = _serve(_on_base(_cython_splitter()), data, cuts, frames_per_turn, window)
    python = _serve(_on_base(_frames_py.FrameSplitter), data, cuts, frames_per_turn, window)
    assert cython == python
