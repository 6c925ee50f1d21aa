"""``status.csv``: Maestro's 11-column status table, rewritten atomically.

Rows are in BFS order from the study's roots (Maestro's order); times are local
``YYYY-MM-DD HH:MM:SS`` rounded to the second, durations ``Nd:HHh:MMm:SSs``, ``--`` and
``--:--:--`` when unknown; there is no trailing newline (as Maestro writes it). The file
is written to a temporary name and renamed, so a reader never sees half a table.
``StatusWriter`` keeps a running study's table current without slowing it down.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import anyio
import structlog

from engine.machines.step import StepRecord
from engine.messages import StepState
from engine.spec.graph import StepInstance

__all__ = [
    "HEADER",
    "STATUS_PAGE",
    "StatusTable",
    "StatusWriter",
    "format_duration",
    "format_time",
    "read_status",
    "render_status",
    "state_counts",
    "status_page",
    "write_status",
]

HEADER = (
    "Step Name,Job ID,Workspace,State,Run Time,Elapsed Time,"
    "Start Time,Submit Time,End Time,Number Restarts,Params"
)


def format_time(ts: float | None) -> str:
    """Maestro's timestamp: local time rounded to the nearest second, or ``--``."""
    if ts is None:
        return "--"
    return dt.datetime.fromtimestamp(round(ts)).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    """Maestro's duration ``0d:00h:00m:01s``, or ``--:--:--``."""
    if seconds is None:
        return "--:--:--"
    s = int(max(seconds, 0.0))
    return f"{s // 86400:d}d:{s % 86400 // 3600:02d}h:{s % 3600 // 60:02d}m:{s % 60:02d}s"


def _static_cells(inst: StepInstance) -> tuple[str, str, str]:
    """The cells of a row that never change: name, workspace column, params."""
    ws = inst.workspace.rstrip("/")
    parent, _, leaf = ws.rpartition("/")
    workspace = f"{parent.rpartition('/')[2]}/{leaf}" if inst.params else leaf
    params = ";".join(f"{k}:{v}" for k, v in inst.params)
    return inst.name, workspace, params


def _row(inst: StepInstance, rec: StepRecord, now: float) -> str:
    return ",".join(_cells(inst, rec, now))


def _cells(inst: StepInstance, rec: StepRecord, now: float) -> list[str]:
    name, workspace, params = _static_cells(inst)
    run_time = elapsed = None
    end = rec.end_time if rec.end_time is not None else now
    if rec.start_time is not None:
        run_time = end - rec.start_time
    if rec.submit_time is not None:
        elapsed = end - rec.submit_time
    cells = [
        name,
        rec.job_id or "--",
        workspace,
        rec.state.value,
        format_duration(run_time),
        format_duration(elapsed),
        format_time(rec.start_time),
        format_time(rec.submit_time),
        format_time(rec.end_time),
        str(rec.restarts + rec.merlin_retries),
        params,
    ]
    return cells


class SampleCounts(Protocol):
    """What the table asks about a sampled step's samples (``SampleShell``)."""

    def counts(self, step: str) -> dict[str, int]: ...

    def sample_states(self, step: str) -> list[tuple[str, str]]: ...


def _sample_rows(cells: list[str], counts: dict[str, int]) -> list[str]:
    """A sampled step's row once per sample state, its Job ID the count (summarised)."""
    out = []
    for state, count in sorted(counts.items()):
        cells[1], cells[3] = f"{count} samples", state
        out.append(",".join(cells))
    return out


class StatusTable:
    """Renders status.csv, re-rendering only the rows whose record changed.

    A row of a step that is not running depends only on its (immutable) record, so it is
    cached by record identity; rows of running steps show a growing run time and are
    rendered every time. A sampled step (Merlin) has one row per state of its samples,
    with their count as its Job ID, or with ``per_sample`` one row per sample
    (``<step>/<sample path>``).
    """

    def __init__(self, order: Sequence[str], steps: Mapping[str, StepInstance], *,
                 samples: SampleCounts | None = None, per_sample: bool = False) -> None:
        self._order = list(order)
        self._steps = steps
        self._cache: dict[str, tuple[StepRecord, str]] = {}
        self._samples = samples
        self._per_sample = per_sample

    def render(self, records: Mapping[str, StepRecord], *, now: float) -> str:
        """Return the whole table for ``records``."""
        lines = [HEADER]
        cache = self._cache
        for name in self._order:
            rec = records[name]
            if self._samples is not None and self._steps[name].sampled:
                lines.extend(self._sampled(name, _cells(self._steps[name], rec, now)))
                continue
            hit = cache.get(name)
            if hit is not None and hit[0] is rec:
                lines.append(hit[1])
                continue
            row = _row(self._steps[name], rec, now)
            if rec.end_time is not None or rec.start_time is None:
                cache[name] = (rec, row)
            lines.append(row)
        return "\n".join(lines)

    def _sampled(self, name: str, cells: list[str]) -> list[str]:
        assert self._samples is not None
        row = ",".join(cells)
        if not self._per_sample:
            return _sample_rows(cells, self._samples.counts(name)) or [row]
        out, ws = [], cells[2]
        for path, state in self._samples.sample_states(name):
            cells[0], cells[1], cells[2], cells[3] = f"{name}/{path}", "--", f"{ws}/{path}", state
            out.append(",".join(cells))
        return out or [row]


class StatusWriter:
    """Rewrites a running study's ``status.csv`` after its steps change, coalescing the
    changes of a busy moment into one write.

    Args:
        path: The file.
        table: Renders the rows.
        records: The live step records.
        clock: Seconds since the epoch (the running steps' times).
        interval: Minimum seconds between two writes.
    """

    def __init__(self, path: Path, table: StatusTable, records: Mapping[str, StepRecord], *,
                 clock: Callable[[], float] = time.time, interval: float = 0.1) -> None:
        self.path = path
        self._table = table
        self._records = records
        self._clock = clock
        self._interval = interval
        self._dirty = anyio.Event()
        self._failing = False

    def changed(self) -> None:
        """A step changed: write the table soon."""
        self._dirty.set()

    async def run(self) -> None:
        """Write after each change, forever (run it in a task group)."""
        while True:
            await self._dirty.wait()
            self._dirty = anyio.Event()
            started = time.perf_counter()
            self.write_now()
            spent = time.perf_counter() - started
            # Coalesce harder for big studies: writing never takes over 10% of the loop.
            await anyio.sleep(max(self._interval, 10 * spent))

    def write_now(self) -> None:
        """Write the table now. A write that fails (a full disk) leaves the last table in
        place, says so once in the log, and is tried again at the next change."""
        try:
            write_status(self.path, self._table.render(self._records, now=self._clock()))
        except OSError as exc:
            if not self._failing:
                structlog.get_logger("troupe.status").warning(
                    "status_not_written", path=str(self.path), error=exc.strerror or str(exc))
            self._failing = True
        else:
            self._failing = False


def render_status(
    order: Sequence[str],
    steps: Mapping[str, StepInstance],
    records: Mapping[str, StepRecord],
    *,
    now: float,
) -> str:
    """Return the whole table (header + one row per step in ``order``)."""
    return StatusTable(order, steps).render(records, now=now)


def write_status(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with ``text``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)  # the old table stays whole
        raise


def read_status(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read a status.csv (ours or Maestro's) into one dict per row.

    Like Maestro's reader it splits on commas; cells beyond the header's eleven (a comma
    inside a parameter value) are joined back into the last column.
    """
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines:
        return []
    keys = lines[0].split(",")
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) > len(keys):
            cells = [*cells[: len(keys) - 1], ",".join(cells[len(keys) - 1 :])]
        rows.append(dict(zip(keys, cells, strict=False)))
    return rows


def _page_size(text: str, default: int = 10_000) -> int:
    try:
        return max(1, min(int(text), 10**6)) if text.strip() else default
    except ValueError:
        return default


STATUS_PAGE = _page_size(os.environ.get("TROUPE_STATUS_PAGE", ""))
"""Steps in one status reply at most (about 2 MB: under NATS's default 8 MB payload;
``$TROUPE_STATUS_PAGE`` for a server with a smaller ``max_payload``)."""


def status_page(total: int, offset: int, limit: int) -> range:
    """The positions (in status order) of the steps a status request asks for: from
    ``offset``, at most ``limit`` (-1: ``STATUS_PAGE``; 0: none), never more than a page."""
    size = STATUS_PAGE if limit < 0 else min(limit, STATUS_PAGE)
    start = min(max(offset, 0), total)
    return range(start, min(start + size, total))


def state_counts(states: Iterable[str]) -> dict[str, int]:
    """Steps per state, in the order of ``StepState`` (states as ``StepState`` or its
    values: ``state_counts(r.state for r in records.values())``)."""
    counts = {s.value: 0 for s in StepState}
    for state in states:
        counts[state] += 1
    return {k: v for k, v in counts.items() if v}
