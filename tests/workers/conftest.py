"""Fixtures of the worker-pool tests: start ``fastinject serve`` and always kill it afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from workers.supervised import Supervised

Supervise = Callable[..., Supervised]
"""``supervise(*args)``: start ``fastinject serve *args`` (killed at the end of the test)."""


@pytest.fixture
def supervise() -> Iterator[Supervise]:
    """Start supervisors; each is killed with its workers at teardown, whatever happened."""
    started: list[Supervised] = []

    def start(*args: str) -> Supervised:
        supervised = Supervised(args)
        started.append(supervised)
        return supervised

    yield start
    for supervised in started:
        supervised.kill()
