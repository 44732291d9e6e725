"""InboxReader (a call's request messages as an async iterator): both twins, same behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import pytest


class _Waits:
    """The reader's slow path: counts its calls and answers from a list (then ends)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if not self.answers:
            raise StopAsyncIteration
        return self.answers.pop(0)


def _failed(exc: Exception) -> BaseException:
    return LookupError(f"cannot deserialize: {exc}")


def _reader(
    stream_impl: ModuleType,
    messages: list[tuple[bytes, bool]],
    deserializer: Callable[[bytes], Any] | None = None,
    waits: _Waits | None = None,
) -> tuple[Any, Any, Any, _Waits]:
    book = stream_impl.CreditBook()
    inbox = stream_impl.Inbox(1, book)
    inbox.deliver(messages, 0)
    waits = _Waits([]) if waits is None else waits
    return stream_impl.InboxReader(inbox, deserializer, waits, _failed), inbox, book, waits


async def _collect(reader: Any) -> list[Any]:
    return [message async for message in reader]


def test_messages_here_are_deserialized_without_waiting(stream_impl: ModuleType) -> None:
    """Messages here and uncompressed come deserialized, owing credit; then the reader waits.

    A wait that ends the stream ends the iteration.
    """
    reader, inbox, book, waits = _reader(
        stream_impl, [(b"ab", False), (b"cde", False)], deserializer=bytes.upper
    )
    assert asyncio.run(_collect(reader)) == [b"AB", b"CDE"]
    assert waits.calls == 1
    assert inbox.last_compressed is False
    assert book.take() == {1: 7 + 8}


def test_a_compressed_or_missing_message_is_awaited(stream_impl: ModuleType) -> None:
    """The slow path (decompression, or waiting) answers what is not plain and here.

    A compressed message stays in the inbox for it.
    """
    waits = _Waits(["slow one", "slow two"])
    reader, inbox, _, _ = _reader(stream_impl, [(b"a", False), (b"z", True)], waits=waits)
    assert asyncio.run(_collect(reader)) == [b"a", "slow one", "slow two"]
    assert waits.calls == 3
    assert inbox.pop() == (b"z", True)  # the slow path here did not take it
    assert inbox.last_compressed is True


def test_a_deserializer_error_becomes_the_failed_error(stream_impl: ModuleType) -> None:
    """A deserializer's exception is replaced by what ``failed`` makes of it (cause kept).

    The message was taken, so its credit is owed.
    """

    def broken(payload: bytes) -> Any:
        raise ValueError(payload.decode())

    reader, _, book, _ = _reader(stream_impl, [(b"bad", False)], deserializer=broken)
    with pytest.raises(LookupError, match="cannot deserialize: bad") as raised:
        asyncio.run(_collect(reader))
    assert isinstance(raised.value.__cause__, ValueError)
    assert book.take() == {1: 8}


_ODD_VALUES = [None, (1, 2), (), StopIteration(3), ValueError("as a value"), [4]]


@pytest.mark.parametrize("value", _ODD_VALUES, ids=repr)
def test_any_deserialized_value_comes_back_unchanged(stream_impl: ModuleType, value: Any) -> None:
    """Tuples, None and exceptions are results like any other, however the step is driven.

    Not StopIteration's arguments: awaited, through anext(), or by next() and send(None).
    """
    reader, _, _, _ = _reader(stream_impl, [(b"x", False)] * 4, deserializer=lambda _: value)

    async def awaited() -> Any:
        return await reader.__anext__()

    async def through_anext() -> Any:
        return await anext(reader)

    assert asyncio.run(awaited()) is value
    assert asyncio.run(through_anext()) is value
    for drive in (next, lambda step: step.send(None)):
        with pytest.raises(StopIteration) as stopped:
            drive(reader.__anext__().__await__())
        assert stopped.value.value is value


def test_the_request_stream_is_iterated_in_order_across_deliveries(
    stream_impl: ModuleType,
) -> None:
    """Messages delivered while the reader waits are read after the wait, in order."""
    book = stream_impl.CreditBook()
    inbox = stream_impl.Inbox(3, book)
    rounds = [[(b"1", False), (b"2", False)], [(b"3", False)]]

    async def wait() -> Any:
        if not rounds:
            raise StopAsyncIteration
        inbox.deliver(rounds.pop(0), 0)
        payload = inbox.pop_plain()
        return payload

    reader = stream_impl.InboxReader(inbox, None, wait, _failed)
    assert asyncio.run(_collect(reader)) == [b"1", b"2", b"3"]
    assert book.take() == {3: 18}


def test_awaitables_are_independent(stream_impl: ModuleType) -> None:
    """Steps taken before earlier ones are awaited, or while those are held, give their own.

    The Cython reader uses an awaitable again only once nobody else holds it.
    """
    reader, inbox, _, _ = _reader(stream_impl, [(b"first", False), (b"second", False)])
    first: Awaitable[Any] = reader.__anext__()
    second: Awaitable[Any] = reader.__anext__()

    async def both() -> list[Any]:
        return [await second, await first]

    assert asyncio.run(both()) == [b"second", b"first"]
    inbox.deliver([(b"third", False)], 0)
    third: Awaitable[Any] = reader.__anext__()  # ``first`` and ``second`` are still held

    async def one() -> Any:
        return await third

    assert asyncio.run(one()) == b"third"
