"""``h2`` tuned for a gRPC server's hot path.

Profiling a unary benchmark showed two thirds of the server's CPU inside h2 and hpack, most of
it re-encoding and re-decoding header blocks that repeat on every call: clients send the same
request headers, and we send the same response headers and ``grpc-status: 0`` trailers.
An HPACK block's meaning depends only on the bytes and on the dynamic table, so a block that
left the table untouched decodes (or encodes) the same way for as long as the table stays as
it was.  The coder subclasses below memoise such blocks, keyed on a *table generation* that
changes whenever an entry is added or the table is resized.

h2 also formats ``repr(frame)`` for a trace log line on every received frame, whether or not
anything logs, and hyperframe's DATA repr hex-encodes the whole payload: a fifth of the CPU of
a 1 MiB call.  Received DATA frames are therefore given a class with a cheap repr.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import h2.connection
import h2.errors
import h2.events
import hpack
import hyperframe.frame

_CACHE_ENTRIES = 256


class _TableGenerationMixin:
    """Counts additions to the coder's dynamic table (evictions only follow additions/resizes)."""

    header_table: Any

    def _track_table(self) -> None:
        self._additions = 0
        self._cache: dict[Any, tuple[tuple[int, int], Any]] = {}
        add = self.header_table.add

        def counting_add(name: bytes, value: bytes) -> None:
            self._additions += 1
            add(name, value)

        self.header_table.add = counting_add

    def _generation(self) -> tuple[int, int]:
        return (self._additions, self.header_table.maxsize)

    def _remember(self, key: Any, generation: tuple[int, int], result: Any) -> None:
        if generation != self._generation():
            return  # the block changed the table: the same bytes may mean something else later
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (generation, result)


class CachingDecoder(_TableGenerationMixin, hpack.Decoder):
    """An HPACK decoder that reuses the result for a repeated block that leaves the table as is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._track_table()

    def decode(self, data: bytes, raw: bool = False) -> Any:
        key = (bytes(data), raw)
        generation = self._generation()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == generation:
            return list(hit[1])
        headers = super().decode(data, raw)
        self._remember(key, generation, tuple(headers))
        return headers


class CachingEncoder(_TableGenerationMixin, hpack.Encoder):
    """An HPACK encoder that reuses the block for repeated headers that leave the table as is."""

    def __init__(self) -> None:
        super().__init__()
        self._track_table()

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        if self.header_table.resized or not isinstance(headers, list):
            return super().encode(headers, huffman)
        key = (tuple(headers), huffman)
        generation = self._generation()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == generation:
            return hit[1]  # type: ignore[no-any-return]
        block = super().encode(headers, huffman)
        self._remember(key, generation, block)
        return block


class _QuietDataFrame(hyperframe.frame.DataFrame):
    """A received DATA frame whose repr does not hex-encode its payload."""

    def __repr__(self) -> str:
        return f"DataFrame(stream_id={self.stream_id}, length={len(self.data)})"


class TunedH2Connection(h2.connection.H2Connection):
    """An ``H2Connection`` with memoising HPACK coders and cheap open-stream counting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = CachingEncoder()
        self.decoder = CachingDecoder()
        self.decoder.max_header_list_size = self.DEFAULT_MAX_HEADER_LIST_SIZE
        self._frame_dispatch_table[_QuietDataFrame] = self._receive_data_frame

    def _receive_goaway_frame(self, frame: Any) -> Any:
        """Report a client's GOAWAY without closing h2's side of the connection.

        RFC 9113 section 6.8: GOAWAY only stops new streams.  h2 moves to its closed state and
        drops queued output, after which the responses of calls in flight could not be sent.
        """
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _receive_frame(self, frame: Any) -> Any:
        if frame.__class__ is hyperframe.frame.DataFrame:
            frame.__class__ = _QuietDataFrame
        return super()._receive_frame(frame)

    @property
    def open_inbound_streams(self) -> int:
        """An upper bound of the open inbound streams, exact when it matters.

        h2 counts by scanning (and pruning) every stream on each new one.  While the stream
        table holds fewer entries than the limit, the open count cannot reach the limit either,
        so the scan is only done when the table is full: closed streams are pruned in batches.
        """
        if len(self.streams) < self.local_settings.max_concurrent_streams:
            return len(self.streams)
        return super().open_inbound_streams
