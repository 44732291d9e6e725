"""Which event loop serves: ``auto`` (uvloop when installed), ``asyncio`` or ``uvloop``."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LOOPS", "check_loop", "run"]

LOOPS = ("auto", "asyncio", "uvloop")
"""The names ``--loop`` takes."""

T = TypeVar("T")


def check_loop(name: str) -> str | None:
    """Why ``name`` cannot be used here (``None`` when it can)."""
    if name not in LOOPS:
        return f"loop must be one of {', '.join(LOOPS)}, not {name!r}"
    if name == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install 'fastinject[uvloop]')"
    return None


def run(main: Coroutine[Any, Any, T], name: str) -> T:
    """Run ``main`` to completion on the loop ``name`` chooses."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if name != "asyncio" and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
