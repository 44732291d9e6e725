"""The frame budget of a loop turn, shared by the connections of a server."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fastinject.options import ServerSettings
from fastinject.turns import FrameTurns


class Loop:
    """Callbacks scheduled with call_soon, run a turn at a time."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the next turn."""
        self.ready.append(callback)

    def next_turn(self) -> None:
        """End this turn: run what was scheduled in it."""
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


def turns(budget: int = 256, minimum: int = 32) -> tuple[FrameTurns, Loop]:
    """A budget whose turns end when the test says so."""
    loop = Loop()
    return FrameTurns(budget, minimum, loop.call_soon), loop


def read(budget: FrameTurns, waiting: int) -> int:
    """A connection with ``waiting`` frames reads once: what it handled."""
    granted = budget.grant()
    frames = min(waiting, granted)
    budget.charge(frames, busy=frames < waiting)
    return frames


def test_a_lone_busy_connection_gets_the_whole_budget() -> None:
    """One connection with more frames than the budget handles all of it, every turn."""
    budget, loop = turns()
    for _ in range(3):
        assert read(budget, 1000) == 256
        loop.next_turn()
    assert budget.grant() == 256


def test_once_the_turn_is_spent_each_connection_gets_the_minimum() -> None:
    """The first connections read in a turn spend the budget; the others move on a little.

    Counted from then on, the next turns grant what is left of the budget.
    """
    budget, loop = turns()
    assert [read(budget, 150) for _ in range(4)] == [150, 150, 32, 32]
    loop.next_turn()
    assert budget.share == 128  # two connections stopped with frames left
    assert [read(budget, 150) for _ in range(4)] == [128, 128, 32, 32]


@pytest.mark.parametrize(("busy", "share"), [(2, 128), (4, 64), (5, 51), (8, 32), (100, 32)])
def test_the_budget_is_split_among_the_connections_busy_the_turn_before(
    busy: int, share: int
) -> None:
    """Each of n busy connections gets budget / n per turn, never below the minimum."""
    budget, loop = turns()
    for _ in range(busy):
        read(budget, 1000)
    loop.next_turn()
    assert budget.share == share
    handled = [read(budget, 1000) for _ in range(busy)]
    assert handled[0] == share
    assert sum(handled) <= 256 + busy * 32


def test_the_share_grows_back_as_connections_stop_being_busy() -> None:
    """Fewer busy connections get more each; with none busy the share is the budget again."""
    budget, loop = turns()
    for _ in range(4):
        read(budget, 1000)
    loop.next_turn()
    assert budget.share == 64
    read(budget, 1000)
    loop.next_turn()
    assert budget.share == 256
    loop.next_turn()
    assert (budget.share, budget.grant()) == (256, 256)


def test_turns_are_counted_only_while_the_budget_matters() -> None:
    """A quiet server schedules nothing; a full turn or a busy connection ends each turn."""
    budget, loop = turns()
    read(budget, 100)
    read(budget, 100)
    assert loop.ready == []
    read(budget, 100)  # 300 frames since counting last stopped: a full turn
    assert len(loop.ready) == 1
    loop.next_turn()
    assert (budget.turn, budget.used, budget.grant()) == (1, 0, 256)
    assert len(loop.ready) == 1  # was the next turn full too?
    read(budget, 10)
    loop.next_turn()
    assert budget.turn == 2
    assert loop.ready == []


def test_a_minimum_above_the_budget_is_the_budget() -> None:
    """A connection never gets more than the budget, whatever the minimum."""
    budget, loop = turns(budget=16, minimum=64)
    for _ in range(3):
        assert read(budget, 100) == 16
    loop.next_turn()
    assert budget.share == 16


def test_settings_size_the_budget() -> None:
    """max_frames_per_turn is the budget, min_frames_per_turn the least share."""
    loop = Loop()
    settings = ServerSettings(max_frames_per_turn=100, min_frames_per_turn=40)
    budget = FrameTurns.for_settings(settings, loop.call_soon)
    assert (budget.grant(), budget.minimum) == (100, 40)
    for _ in range(5):
        read(budget, 1000)
    loop.next_turn()
    assert budget.share == 40
