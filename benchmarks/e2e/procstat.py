"""CPU time of a process and its descendants, read from Linux ``/proc``.

``/proc/<pid>/stat`` reports user and system time of every thread of the process (fields 14
and 15) plus that of its children it has waited for (fields 16 and 17), in clock ticks.
Descendants still running are found through their parent pid and added, so a server that
forks workers is measured whole.
"""

from __future__ import annotations

import os
from pathlib import Path

_PROC = Path("/proc")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Return the fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ")".
    return text[text.rindex(")") + 2 :].split()


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds used so far by ``pid`` and all its descendants.

    Raises ProcessLookupError if ``pid`` no longer exists.
    """
    children = _children_of()
    total_ticks = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        fields = _stat_fields(current)
        if fields is None:
            if current == pid:
                raise ProcessLookupError(f"process {pid} has exited")
            continue
        # After the command name: state, ppid, ..., utime is the 12th, cstime the 15th.
        total_ticks += sum(int(value) for value in fields[11:15])
        pending.extend(children.get(current, ()))
    return total_ticks / _TICKS_PER_SECOND
