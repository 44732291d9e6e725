"""CreditBook and Inbox (the receive side of the stream core): credit owed once, both twins."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import fastinject._stream_py


def test_taken_messages_owe_their_credit_until_the_next_take(stream_impl: ModuleType) -> None:
    """Each message taken owes its wire size (payload + 5) on its stream, summed per stream."""
    book = stream_impl.CreditBook()
    one, three = stream_impl.Inbox(1, book), stream_impl.Inbox(3, book)
    one.deliver([(b"abc", False), (b"", True)], 0)
    three.deliver([(bytes(10), False)], 0)
    assert book.take() is None  # nothing taken yet
    assert len(one) == 2
    assert one.pop() == (b"abc", False)
    assert one.pop() == (b"", True)
    assert one.pop() is None
    assert three.pop() == (bytes(10), False)
    assert book.take() == {1: 8 + 5, 3: 15}
    assert book.take() is None


def test_prepaid_bytes_are_deducted_from_the_next_messages(stream_impl: ModuleType) -> None:
    """Credit returned while a message was assembled is not owed again when it is taken."""
    book = stream_impl.CreditBook()
    inbox = stream_impl.Inbox(5, book)
    inbox.deliver([(bytes(100), False)], 60)
    inbox.pop()
    assert book.take() == {5: 105 - 60}
    inbox.deliver([(bytes(10), False), (bytes(10), False)], 20)  # more than the first owes
    inbox.pop()
    assert book.take() is None
    inbox.pop()
    assert book.take() == {5: 30 - 20}


def test_release_owes_the_credit_of_every_message_left(stream_impl: ModuleType) -> None:
    """A call that ends without reading gives all its messages' credit back, less prepaid."""
    book = stream_impl.CreditBook()
    inbox = stream_impl.Inbox(1, book)
    inbox.deliver([(bytes(7), False)] * 3, 4)
    inbox.pop()
    inbox.release()
    assert len(inbox) == 0
    assert inbox.pop() is None
    assert book.take() == {1: 3 * 12 - 4}


def test_added_credit_is_owed_beside_consumed_credit(stream_impl: ModuleType) -> None:
    """add() (padding, early credit, failed streams) sums with what inboxes owe."""
    book = stream_impl.CreditBook()
    book.add(1, 10)
    stream_impl.Inbox(1, book).deliver([(b"x", False)], 0)
    book.add(1, 0)
    book.add(7, 3)
    assert book.take() == {1: 10, 7: 3}


def test_the_owner_hears_once_per_flush_not_per_message(stream_impl: ModuleType) -> None:
    """on_consumed runs when a taken message first owes credit after a take(), then not again."""
    calls: list[None] = []
    book = stream_impl.CreditBook(lambda: calls.append(None))
    inbox = stream_impl.Inbox(1, book)
    inbox.deliver([(b"m", False)] * 4, 0)
    book.add(1, 100)  # credit nobody consumed: the protocol flushes it anyway
    assert calls == []
    inbox.pop()
    inbox.pop()
    assert len(calls) == 1
    book.take()
    inbox.pop()
    assert len(calls) == 2
    book.on_consumed = None
    book.take()
    inbox.pop()
    assert len(calls) == 2


def test_the_owner_hears_once_enough_credit_is_owed(stream_impl: ModuleType) -> None:
    """With ``flush_after``, on_consumed waits until that much credit is owed.

    The credit of the messages taken since the last take(), over all inboxes, debts deducted;
    then it runs once until the next take.
    """
    calls: list[None] = []
    book = stream_impl.CreditBook(lambda: calls.append(None), flush_after=30)
    one, three = stream_impl.Inbox(1, book), stream_impl.Inbox(3, book)
    one.deliver([(bytes(5), False)] * 4, 0)  # 10 bytes of credit each
    three.deliver([(bytes(5), False)] * 4, 12)  # the first one and a bit were paid early
    one.pop()
    three.pop()  # owes nothing: paid early
    one.pop()
    assert calls == []  # 20 bytes
    three.pop()  # 8 more (2 of its debt left)
    assert calls == []
    one.pop()
    assert len(calls) == 1  # 38 bytes
    three.pop()
    assert len(calls) == 1
    assert book.owed == 48
    assert book.take() == {1: 30, 3: 18}
    assert book.owed == 0
    one.pop()
    book.add(3, 7)  # credit the protocol adds counts too
    assert (book.owed, len(calls)) == (17, 1)  # the count starts again at each take
    assert book.take() is None  # less than flush_after: it stays owed
    assert book.owed == 17
    three.pop()  # its last message: 27 owed
    assert book.take() is None
    book.add(1, 3)
    assert book.take() == {1: 13, 3: 17}
    assert book.flush_after == 30


def test_a_closed_book_keeps_no_inbox(stream_impl: ModuleType) -> None:
    """After close(), what was owed is gone and inboxes released later are not listed."""
    calls: list[None] = []
    book = stream_impl.CreditBook(lambda: calls.append(None))
    inbox = stream_impl.Inbox(1, book)
    inbox.deliver([(b"m", False)] * 3, 0)
    inbox.pop()
    assert len(calls) == 1
    book.close()
    assert book.on_consumed is None
    inbox.release()  # the call ends after its connection
    assert book.take() is None
    del book
    assert sys.getrefcount(inbox) == 2  # (the argument of getrefcount): nothing else holds it


def test_pop_plain_takes_only_an_uncompressed_message(stream_impl: ModuleType) -> None:
    """pop_plain returns the payload of a plain message, and leaves a compressed one in place."""
    book = stream_impl.CreditBook()
    inbox = stream_impl.Inbox(1, book)
    inbox.deliver([(b"plain", False), (b"zipped", True)], 0)
    assert inbox.pop_plain() == b"plain"
    assert inbox.pop_plain() is None
    assert len(inbox) == 1
    assert book.take() == {1: 10}
    assert inbox.pop() == (b"zipped", True)
    assert inbox.pop_plain() is None


def _run(module: ModuleType, ops: list[tuple[Any, ...]]) -> list[object]:
    book = module.CreditBook()
    inboxes = {1: module.Inbox(1, book), 3: module.Inbox(3, book)}
    results: list[object] = []
    for op in ops:
        inbox = inboxes[op[1]]
        if op[0] == "deliver":
            inbox.deliver([(bytes(n), n % 2 == 1) for n in op[2]], op[3])
        elif op[0] == "pop":
            results.append([inbox.pop() for _ in range(op[2])])
        elif op[0] == "pop_plain":
            results.append([inbox.pop_plain() for _ in range(op[2])])
        elif op[0] == "release":
            inbox.release()
        else:
            results.append(book.take())
        results.append((len(inboxes[1]), len(inboxes[3])))
    return results


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.sampled_from([1, 3]),
                  st.lists(st.integers(0, 50), max_size=80), st.integers(0, 60)),
        st.tuples(st.sampled_from(["pop", "pop_plain"]), st.sampled_from([1, 3]),
                  st.integers(1, 100)),
        st.tuples(st.just("release"), st.sampled_from([1, 3])),
        st.tuples(st.just("take"), st.sampled_from([1, 3])),
    ),
    max_size=25,
)


@settings(deadline=None, max_examples=200)
@given(ops=_ops)
def test_cython_and_python_agree_on_any_sequence(
    stream_impl: ModuleType, ops: list[tuple[Any, ...]]
) -> None:
    """Any sequence of deliveries, takes and releases: same messages and credit in both twins.

    Deliveries of up to 80 messages outgrow the Cython inbox's compaction threshold, so its
    reuse of taken slots is checked against the twin's deque.
    """
    assert _run(stream_impl, ops) == _run(fastinject._stream_py, ops)
