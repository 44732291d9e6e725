"""gRPC message framing: the deframer and framer, from the Cython module when available.

``fastinject._framing`` (Cython) is used unless the environment variable
``FASTINJECT_NO_EXTENSIONS`` is set to anything but ``""`` or ``"0"``, or the compiled module
cannot be imported; then the pure-Python twin ``fastinject._framing_py`` is used.  Both have
the same API and behaviour.  :data:`IMPLEMENTATION` says which one is active.  Type checkers
always see the Python twin.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._framing_py import DEFAULT_MAX_MESSAGE_LENGTH

IMPLEMENTATION: str
"""``"cython"`` or ``"python"``: the implementation behind the names of this module."""

if TYPE_CHECKING or os.environ.get("FASTINJECT_NO_EXTENSIONS", "") not in ("", "0"):
    from ._framing_py import Deframer, frame_message, frame_messages

    IMPLEMENTATION = "python"
else:
    try:
        from ._framing import Deframer, frame_message, frame_messages
    except ImportError:
        from ._framing_py import Deframer, frame_message, frame_messages

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = [
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "IMPLEMENTATION",
    "Deframer",
    "frame_message",
    "frame_messages",
]
