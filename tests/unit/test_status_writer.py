"""``engine.status.StatusWriter``: a big study's status.csv is rendered and written in the
status thread, from a copy of the records, and whole; a small one on the event loop."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import msgspec

from engine.machines.step import new_record
from engine.messages import StepState
from engine.spec.graph import StepInstance
from engine.status import StatusTable, StatusWriter, read_status


def _writer(tmp_path: Path, n: int) -> tuple[StatusWriter, dict]:
    names = [f"s{i}" for i in range(n)]
    steps = {s: StepInstance(name=s, step=s, description="", workspace=str(tmp_path / s),
                             cmd="true") for s in names}
    records = {s: new_record(s, 0) for s in names}
    return StatusWriter(tmp_path / "status.csv", StatusTable(names, steps), records), records


async def _written(writer: StatusWriter, want: int) -> list[dict[str, str]]:
    with anyio.fail_after(30):
        while True:
            rows = read_status(writer.path) if writer.path.exists() else []
            if len(rows) == want:
                return rows
            await anyio.sleep(0.01)


async def test_a_big_table_is_written_whole_from_the_status_thread(tmp_path: Path) -> None:
    writer, records = _writer(tmp_path, 6000)
    seen: list[str] = []
    write_now = writer.write_now

    def spy(*args: object) -> None:
        seen.append(threading.current_thread().name)
        write_now(*args)  # type: ignore[arg-type]

    writer.write_now = spy  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        writer.changed()
        rows = await _written(writer, 6000)
        assert {"INITIALIZED"} == {r["State"] for r in rows}
        records["s5"] = msgspec.structs.replace(records["s5"], state=StepState.FINISHED)
        writer.changed()
        with anyio.fail_after(30):
            while read_status(writer.path)[5]["State"] != "FINISHED":
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert seen and all(name.startswith("troupe-status") for name in seen)


async def test_a_small_table_is_written_on_the_event_loop(tmp_path: Path) -> None:
    writer, _ = _writer(tmp_path, 10)
    seen: list[str] = []
    write_now = writer.write_now
    writer.write_now = lambda *a: (seen.append(threading.current_thread().name),  # type: ignore[method-assign]
                                   write_now(*a))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.run)
        writer.changed()
        await _written(writer, 10)
        tg.cancel_scope.cancel()
    assert seen == [threading.current_thread().name]
