"""Deadlines: one timer per connection, calls interrupted in deadline order, ended calls skipped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastinject.deadlines import Deadlines


class Timer:
    """A timer of :class:`Loop`: fired by the test."""

    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Never fire."""
        self.cancelled = True


class Loop:
    """The part of an event loop :class:`Deadlines` uses, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        """The loop's clock."""
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> Timer:
        """Record a timer."""
        timer = Timer(when, callback, args)
        self.timers.append(timer)
        return timer

    @property
    def armed(self) -> list[Timer]:
        """The timers neither fired nor cancelled."""
        return [t for t in self.timers if not t.cancelled]

    def fire(self, now: float | None = None) -> None:
        """Fire the one armed timer, the clock at ``now`` (default: the timer's time)."""
        (timer,) = self.armed
        self.now = timer.when if now is None else now
        self.timers.remove(timer)
        timer.callback(*timer.args)


class Call:
    """A call that records when its deadline passed."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.done = False

    def on_deadline(self) -> None:
        """Record the deadline."""
        self.log.append(self.name)


def deadlines() -> tuple[Deadlines, Loop, list[str]]:
    """A :class:`Deadlines` on a :class:`Loop`, and the log of calls interrupted."""
    loop = Loop()
    return Deadlines(loop), loop, []  # type: ignore[arg-type]


def test_calls_are_interrupted_in_deadline_order_by_one_timer() -> None:
    """One timer is armed, for the earliest deadline; each firing interrupts what is due."""
    dl, loop, log = deadlines()
    for name, when in (("c", 1003.0), ("a", 1001.0), ("b", 1002.0), ("b2", 1002.0)):
        dl.add(when, Call(name, log))
    assert [t.when for t in loop.armed] == [1001.0]
    loop.fire()
    assert log == ["a"]
    loop.fire()
    assert log == ["a", "b", "b2"]
    loop.fire()
    assert log == ["a", "b", "b2", "c"]
    assert loop.armed == []
    assert len(dl) == 0


def test_an_earlier_deadline_rearms_the_timer() -> None:
    """A call whose deadline comes before the armed one moves the timer; a later one does not."""
    dl, loop, log = deadlines()
    dl.add(1005.0, Call("late", log))
    dl.add(1009.0, Call("later", log))
    assert [t.when for t in loop.armed] == [1005.0]
    dl.add(1001.0, Call("early", log))
    assert [t.when for t in loop.armed] == [1001.0]
    loop.fire()
    assert log == ["early"]
    assert [t.when for t in loop.armed] == [1005.0]


def test_a_call_done_before_its_deadline_is_not_interrupted() -> None:
    """An ended call's entry is skipped when its deadline comes."""
    dl, loop, log = deadlines()
    first, second = Call("first", log), Call("second", log)
    dl.add(1001.0, first)
    dl.add(1001.0, second)
    first.done = True
    dl.ended()
    loop.fire()
    assert log == ["second"]


def test_a_timer_firing_early_still_interrupts_what_it_was_set_for() -> None:
    """A loop may fire a timer a little before its time (timers are rounded): due calls go."""
    dl, loop, log = deadlines()
    dl.add(1001.0, Call("due", log))
    dl.add(1001.5, Call("not yet", log))
    loop.fire(now=1000.9995)
    assert log == ["due"]
    assert [t.when for t in loop.armed] == [1001.5]


def test_ended_calls_do_not_pile_up() -> None:
    """Many short calls with long deadlines: the heap is rebuilt once they are most of it."""
    dl, loop, log = deadlines()
    running = Call("running", log)
    dl.add(4600.0, running)
    for index in range(10_000):
        call = Call(str(index), log)
        dl.add(4600.0 + index, call)
        call.done = True
        dl.ended()
        assert len(dl) <= 2 * 65 + 1
    loop.fire()
    assert log == ["running"]


def test_close_stops_every_deadline() -> None:
    """Once the connection is gone no deadline fires, and ended calls are harmless."""
    dl, loop, log = deadlines()
    dl.add(1001.0, Call("a", log))
    dl.close()
    assert loop.armed == []
    dl.ended()
    assert len(dl) == 0
