"""The per-stream core of a connection, from the Cython module when available.

``fastinject._stream`` (Cython) is used unless the environment variable
``FASTINJECT_NO_EXTENSIONS`` is set to anything but ``""`` or ``"0"``, or the compiled module
cannot be imported; then the pure-Python twin ``fastinject._stream_py`` is used.  Both have the
same API and behaviour.  :data:`IMPLEMENTATION` says which one is active.  Type checkers always
see the Python twin.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

IMPLEMENTATION: str
"""``"cython"`` or ``"python"``: the implementation behind the names of this module."""

if TYPE_CHECKING or os.environ.get("FASTINJECT_NO_EXTENSIONS", "") not in ("", "0"):
    from ._stream_py import KEEP_APART, CreditBook, Inbox, InboxReader, SendQueue

    IMPLEMENTATION = "python"
else:
    try:
        from ._stream import KEEP_APART, CreditBook, Inbox, InboxReader, SendQueue
    except ImportError:
        from ._stream_py import KEEP_APART, CreditBook, Inbox, InboxReader, SendQueue

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = ["IMPLEMENTATION", "KEEP_APART", "CreditBook", "Inbox", "InboxReader", "SendQueue"]
