"""Fault injection for tests of crash recovery: a process dies at a named point, once, when asked to.

Off unless `LORAPLANE_FAULT_INJECTION=true`. A test arms a point by writing a file named after it under
`<data_dir>/faults/`, holding what must match there (an event type, say; empty matches anything). The
first process to reach the point with a match removes the file and exits at once, as a crash would:
no cleanup, no flush, nothing acknowledged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from infra.settings import Settings

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 86


def crash_point(settings: Settings, point: str, details: Iterable[str] = ()) -> None:
    if not settings.fault_injection:
        return
    armed = settings.data_dir / "faults" / point
    try:
        wanted = armed.read_text().strip()
    except FileNotFoundError:
        return
    if wanted and wanted not in set(details):
        return
    try:
        armed.unlink()
    except FileNotFoundError:
        return  # another process took it
    log.error("fault injection: crashing at %s (%s)", point, wanted or "any")
    os._exit(CRASH_EXIT_CODE)


def arm(data_dir: os.PathLike[str] | str, point: str, match: str = "") -> None:
    """Arm `point` for the processes that run with `data_dir` (tests call this)."""
    from pathlib import Path

    faults = Path(data_dir) / "faults"
    faults.mkdir(parents=True, exist_ok=True)
    (faults / point).write_text(match)
