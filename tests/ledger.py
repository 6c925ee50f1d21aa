"""An independent ledger for tests: each step appends what it did to a file opened with
O_APPEND (shell ``>>``), so assertions do not rely on the engine's own records.

A line is ``study|step|attempt|pid|start|end|exit`` where ``end`` and ``exit`` are ``-``
on the line written when the step starts, and filled on the line written when it exits
(a step killed by SIGKILL writes no exit line).
"""

from __future__ import annotations

from pathlib import Path

import msgspec

__all__ = ["Entry", "ledger_cmd", "max_overlap", "read_ledger"]


class Entry(msgspec.Struct, frozen=True):
    study: str
    step: str
    attempt: int
    pid: int
    start: float
    end: float | None
    exit: int | None


def ledger_cmd(ledger: Path, body: str) -> str:
    """Wrap a step's shell ``body`` so it records its start and exit in ``ledger``."""
    head = (
        f'L="{ledger}"; S=$(date +%s.%N)\n'
        "trap 'rc=$?; echo \"$TROUPE_STUDY_ID|$TROUPE_STEP|$TROUPE_ATTEMPT|$$|$S|"
        "$(date +%s.%N)|$rc\" >> \"$L\"' EXIT\n"
        'echo "$TROUPE_STUDY_ID|$TROUPE_STEP|$TROUPE_ATTEMPT|$$|$S|-|-" >> "$L"\n'
    )
    return head + body


def read_ledger(ledger: Path) -> list[Entry]:
    """Every line of the ledger, in the order it was appended."""
    out = []
    for line in ledger.read_text().splitlines():
        study, step, attempt, pid, start, end, code = line.split("|")
        out.append(Entry(study, step, int(attempt), int(pid), float(start),
                         None if end == "-" else float(end), None if code == "-" else int(code)))
    return out


def max_overlap(entries: list[Entry]) -> int:
    """The largest number of steps running at the same moment (from exit lines)."""
    points = []
    for e in entries:
        if e.end is not None:
            points += [(e.start, 1), (e.end, -1)]
    running = peak = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        running += delta
        peak = max(peak, running)
    return peak
