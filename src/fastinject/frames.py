"""The inbound frame splitter of a connection, from the Cython module when available.

``fastinject._frames`` (Cython) is used unless the environment variable
``FASTINJECT_NO_EXTENSIONS`` is set to anything but ``""`` or ``"0"``, or the compiled module
cannot be imported; then the pure-Python twin ``fastinject._frames_py`` is used.  Both have the
same API and behaviour.  :data:`IMPLEMENTATION` says which one is active.  Type checkers always
see the Python twin.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._frames_py import HEADERS_FRAME_COST, Fed

IMPLEMENTATION: str
"""``"cython"`` or ``"python"``: the implementation behind the names of this module."""

if TYPE_CHECKING or os.environ.get("FASTINJECT_NO_EXTENSIONS", "") not in ("", "0"):
    from ._frames_py import FrameSplitter, data_run, deframe_data_run

    IMPLEMENTATION = "python"
else:
    try:
        from ._frames import FrameSplitter, data_run, deframe_data_run
    except ImportError:
        from ._frames_py import FrameSplitter, data_run, deframe_data_run

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = [
    "HEADERS_FRAME_COST",
    "IMPLEMENTATION",
    "Fed",
    "FrameSplitter",
    "data_run",
    "deframe_data_run",
]
