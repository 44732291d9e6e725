"""gRPC status codes, and coercion of grpcio's ``grpc.StatusCode`` to ours.

fastinject does not depend on grpcio at run time, yet servicers written for grpcio pass
``grpc.StatusCode`` members to ``context.abort``/``set_code``.  Both enums carry
``(int, name)`` tuples as values, so :func:`coerce_status` accepts either (or a plain int).
"""

from __future__ import annotations

import enum
from typing import Any


class StatusCode(enum.Enum):
    """The gRPC status codes, with the same ``(int, str)`` values as ``grpc.StatusCode``."""

    OK = (0, "ok")
    CANCELLED = (1, "cancelled")
    UNKNOWN = (2, "unknown")
    INVALID_ARGUMENT = (3, "invalid argument")
    DEADLINE_EXCEEDED = (4, "deadline exceeded")
    NOT_FOUND = (5, "not found")
    ALREADY_EXISTS = (6, "already exists")
    PERMISSION_DENIED = (7, "permission denied")
    RESOURCE_EXHAUSTED = (8, "resource exhausted")
    FAILED_PRECONDITION = (9, "failed precondition")
    ABORTED = (10, "aborted")
    OUT_OF_RANGE = (11, "out of range")
    UNIMPLEMENTED = (12, "unimplemented")
    INTERNAL = (13, "internal")
    UNAVAILABLE = (14, "unavailable")
    DATA_LOSS = (15, "data loss")
    UNAUTHENTICATED = (16, "unauthenticated")

    @property
    def number(self) -> int:
        """The numeric code sent in ``grpc-status``."""
        return int(self.value[0])

    def __eq__(self, other: object) -> bool:
        # Equal to grpcio's member of the same name, so code written for grpc.aio
        # (``context.code() == grpc.StatusCode.NOT_FOUND``, dicts keyed by grpc's codes) works.
        if isinstance(other, StatusCode):
            return self is other
        return type(other).__name__ == "StatusCode" and getattr(other, "value", None) == self.value

    def __hash__(self) -> int:
        return hash(self._name_)  # what grpc.StatusCode (an Enum) hashes, for mixed dict keys


_BY_NUMBER = {code.number: code for code in StatusCode}


def coerce_status(code: Any) -> StatusCode:
    """Return our :class:`StatusCode` for ``code``.

    ``code`` may be a :class:`StatusCode`, a ``grpc.StatusCode`` (anything whose ``value`` is an
    ``(int, str)`` tuple) or an int.  Raises :class:`ValueError` for anything else.
    """
    if isinstance(code, StatusCode):
        return code
    number = code
    value = getattr(code, "value", None)
    if isinstance(value, tuple) and value and isinstance(value[0], int):
        number = value[0]
    if isinstance(number, int) and not isinstance(number, bool) and number in _BY_NUMBER:
        return _BY_NUMBER[number]
    raise ValueError(f"not a gRPC status code: {code!r}")
