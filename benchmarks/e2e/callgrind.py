"""Counting a running server's instructions with valgrind's callgrind tool.

The server runs under ``valgrind --tool=callgrind``, which counts every instruction it executes
(``Ir``), in every thread, whatever else the machine is doing.  ``callgrind_control --dump``
asks the running process to write the counts gathered since its previous dump to a new file
and start counting afresh, so the difference between two dumps brackets exactly what the
server executed in between.  The total of one dump is the ``summary:`` line of its header.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

VALGRIND = "valgrind"
"""Name (or path) of the valgrind launcher."""

CALLGRIND_CONTROL = "callgrind_control"
"""Name (or path) of the script that sends commands to a running callgrind."""

CONTROL_TIMEOUT_S = 120.0
"""A dump request is abandoned (and the measurement failed) after this long."""

_SUMMARY = re.compile(r"^summary:\s*(\d+)\s*$", re.MULTILINE)
_OUT_FILE = "callgrind.out"
_VGDB_PIPES = "vgdb-pipe"


class CallgrindError(Exception):
    """A dump could not be requested or read."""


def missing_tools() -> list[str]:
    """Return the valgrind programs this mode needs that are not on PATH."""
    return [tool for tool in (VALGRIND, CALLGRIND_CONTROL) if shutil.which(tool) is None]


def version() -> str:
    """Return valgrind's version, e.g. ``valgrind-3.19.0``."""
    completed = subprocess.run(
        [VALGRIND, "--version"], capture_output=True, text=True, timeout=10, check=True
    )
    return completed.stdout.strip()


def command_prefix(out_dir: Path) -> list[str]:
    """Return the argv prefix that runs a Python server under callgrind.

    Dumps and vgdb's pipes go to ``out_dir``.  ``PYTHONHASHSEED=0`` makes the layout of
    string-keyed dicts and sets the same in every run, so counts also repeat across runs.
    ``env`` and valgrind both exec, so the process id the harness sees is the server's.
    """
    return [
        "env",
        "PYTHONHASHSEED=0",
        VALGRIND,
        "--tool=callgrind",
        "--trace-children=no",
        # Only totals are read: skip per-line attribution, which makes dumps larger and slower.
        "--dump-line=no",
        f"--callgrind-out-file={out_dir / _OUT_FILE}.%p",
        f"--vgdb-prefix={out_dir / _VGDB_PIPES}",
    ]


def parse_summary(text: str) -> int:
    """Return the instruction total of one callgrind dump (its ``summary:`` line).

    Raises CallgrindError if the header has no summary.
    """
    match = _SUMMARY.search(text)
    if match is None:
        raise CallgrindError("callgrind dump has no 'summary:' line")
    return int(match.group(1))


class Counter:
    """Reads the instructions one server under callgrind executed between two calls.

    The first :meth:`read` returns what was counted since the server started (or since the
    last dump of anyone else); each later one what was counted since the previous read.
    """

    def __init__(self, pid: int, out_dir: Path) -> None:
        """Count for process ``pid``, started with :func:`command_prefix` (``out_dir``)."""
        self.pid = pid
        self.out_dir = out_dir
        self.dumps = 0

    def read(self) -> int:
        """Dump the counters and return the instructions executed since the previous dump."""
        try:
            completed = subprocess.run(
                [
                    CALLGRIND_CONTROL,
                    f"--vgdb-prefix={self.out_dir / _VGDB_PIPES}",
                    "--dump",
                    str(self.pid),
                ],
                capture_output=True,
                text=True,
                timeout=CONTROL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CallgrindError(
                f"callgrind_control did not answer in {CONTROL_TIMEOUT_S} s"
            ) from exc
        output = completed.stdout + completed.stderr
        if completed.returncode != 0 or "OK." not in output:
            raise CallgrindError(f"callgrind_control --dump failed: {output.strip()[-1000:]}")
        self.dumps += 1
        # callgrind numbers its dumps 1, 2, ... in the order it writes them.
        dump = self.out_dir / f"{_OUT_FILE}.{self.pid}.{self.dumps}"
        try:
            with dump.open() as header:
                text = "".join(line for _, line in zip(range(50), header, strict=False))
        except FileNotFoundError as exc:
            raise CallgrindError(f"callgrind wrote no dump {dump.name}") from exc
        dump.unlink()
        return parse_summary(text)
