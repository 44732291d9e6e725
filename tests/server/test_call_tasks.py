"""How a handler runs: in a task of its own, in its own copy of the context, through grpcio.

What a handler must see even when it never suspends (any faster way of running it, such as
stepping its coroutine inline, has to keep this): a current task (for ``asyncio.timeout``,
``TaskGroup``, libraries that look for one), the same task before and after a suspension,
context variables an interceptor set, and none that an earlier call on the same connection set.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

import fastinject

SERVICE = "test.Tasks"

TAG: contextvars.ContextVar[str] = contextvars.ContextVar("TAG", default="untagged")
"""Set by the :class:`Tagger` interceptor from the call's ``tag`` metadata."""

LEFT: contextvars.ContextVar[str] = contextvars.ContextVar("LEFT", default="clean")
"""Set by every :func:`report` call, after it has read it."""


async def report(request: bytes, context: fastinject.ServicerContext) -> bytes:
    """Answer ``TAG|LEFT`` without suspending, then set ``LEFT`` for whoever sees it next."""
    answer = f"{TAG.get()}|{LEFT.get()}".encode()
    LEFT.set("left by an earlier call")
    return answer


async def task_apis(request: bytes, context: fastinject.ServicerContext) -> bytes:
    """Use, before and without suspending, what needs a current task; answer which task ran."""
    task = asyncio.current_task()
    async with asyncio.timeout(5):
        pass
    return b"task" if task is not None and not task.done() else b"no task"


async def task_group(request: bytes, context: fastinject.ServicerContext) -> bytes:
    """Suspend in a TaskGroup (whose entry needs a current task); answer whether the task held."""
    before = asyncio.current_task()
    async with asyncio.TaskGroup() as group:
        child = group.create_task(asyncio.sleep(0, result=b"child"))
    same = asyncio.current_task() is before and before is not None
    return child.result() + (b"|same task" if same else b"|another task")


class Unhashable:
    """A sync behavior that cannot be a dict key (``__eq__`` without ``__hash__``)."""

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = None  # type: ignore[assignment]

    def __call__(self, request: bytes, context: Any) -> bytes:
        """Answer ``called:`` and the request."""
        return b"called:" + request


class Tagger:
    """An interceptor that sets :data:`TAG` from the call's ``tag`` metadata, when it has one."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        """Set :data:`TAG`, then look the handler up."""
        for key, value in details.invocation_metadata:
            if key == "tag":
                TAG.set(value)
        return await continuation(details)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    """A grpcio channel (one connection) to a server of test.Tasks with :class:`Tagger`."""
    server = fastinject.Server(interceptors=[Tagger()])
    server.add_registered_method_handlers(SERVICE, {
        "Report": fastinject.unary_unary_rpc_method_handler(report),
        "TaskApis": fastinject.unary_unary_rpc_method_handler(task_apis),
        "TaskGroup": fastinject.unary_unary_rpc_method_handler(task_group),
        "Unhashable": fastinject.unary_unary_rpc_method_handler(Unhashable()),
    })
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


def call(channel: grpc.aio.Channel, name: str) -> Any:
    """A raw-bytes unary multi-callable for ``/test.Tasks/<name>``."""
    return channel.unary_unary(f"/{SERVICE}/{name}")


async def test_interceptor_context_reaches_the_handler_and_stays_with_its_call(
    channel: grpc.aio.Channel,
) -> None:
    """A context variable an interceptor sets is seen by the handler, not by later calls.

    Nor does what a handler sets reach the next call on the same connection.
    """
    assert await call(channel, "Report")(b"", metadata=(("tag", "blue"),)) == b"blue|clean"
    assert await call(channel, "Report")(b"") == b"untagged|clean"
    assert await call(channel, "Report")(b"", metadata=(("tag", "red"),)) == b"red|clean"


async def test_concurrent_calls_keep_their_own_context(channel: grpc.aio.Channel) -> None:
    """Calls arriving together on one connection each see only their own interceptor's tag."""
    tags = [f"tag{i}" for i in range(20)]
    answers = await asyncio.gather(
        *(call(channel, "Report")(b"", metadata=(("tag", tag),)) for tag in tags)
    )
    assert answers == [f"{tag}|clean".encode() for tag in tags]


async def test_a_handler_that_never_suspends_runs_in_a_task(channel: grpc.aio.Channel) -> None:
    """``asyncio.current_task()`` and ``asyncio.timeout`` work before any suspension."""
    assert await call(channel, "TaskApis")(b"") == b"task"


async def test_a_handler_keeps_its_task_across_suspensions(channel: grpc.aio.Channel) -> None:
    """A TaskGroup can be entered at once, and the handler's task is the same after it."""
    assert await call(channel, "TaskGroup")(b"") == b"child|same task"


async def test_an_unhashable_behavior_is_served(channel: grpc.aio.Channel) -> None:
    """A callable object that cannot be hashed is still served (as a sync handler), every time."""
    for _ in range(2):
        assert await call(channel, "Unhashable")(b"x") == b"called:x"
