"""One study, several backends: Merlin's per-step ``batch: {type: flux}`` in a study
whose own ``batch.type`` is another.

``RoutedAdapter`` sends each step to the adapter of its ``batch_type`` (the study's
adapter when it has none) and each handle back to the adapter that made it
(``JobHandle.backend``). It is not a backend of its own: it holds no job state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adapters.base import Adapter, Batches, JobHandle, JobRequest, JobResult

if TYPE_CHECKING:
    from engine.spec.graph import StepInstance

__all__ = ["RoutedAdapter"]


class RoutedAdapter(Adapter):
    """Routes steps to ``by_type[step.batch_type]``, else to ``default``.

    Args:
        default: The study's own adapter.
        by_type: The adapters of the other batch types its steps ask for.
        local: The local adapter they all hand their unscheduled steps to.
    """

    name = "routed"

    def __init__(self, default: Adapter, by_type: Mapping[str, Adapter], *,
                 local: Adapter) -> None:
        self.default = default
        self.by_type = dict(by_type)
        self._all = [default, *self.by_type.values()]
        self._by_name = {a.name: a for a in self._all} | {local.name: local}

    @property  # type: ignore[override]
    def takes_reports(self) -> bool:  # type: ignore[override]
        return any(a.takes_reports for a in self._all)

    def _for(self, step: StepInstance) -> Adapter:
        return self.by_type.get(step.batch_type, self.default) if step.batch_type else self.default

    def _owner(self, handle: JobHandle) -> Adapter:
        return self._by_name.get(handle.backend, self.default)

    def write_script(self, step: StepInstance) -> Path:
        return self._for(step).write_script(step)

    def prepare(self, step: StepInstance) -> None:
        self._for(step).prepare(step)

    async def submit(self, request: JobRequest) -> JobHandle:
        return await self._for(request.step).submit(request)

    async def started(self, handle: JobHandle) -> None:
        await self._owner(handle).started(handle)

    async def wait(self, handle: JobHandle) -> JobResult:
        return await self._owner(handle).wait(handle)

    async def cancel(self, handle: JobHandle) -> None:
        await self._owner(handle).cancel(handle)

    async def lookup(self, request: JobRequest) -> JobHandle | JobResult | None:
        return await self._for(request.step).lookup(request)

    async def cleanup(self) -> None:
        for adapter in self._all:
            await adapter.cleanup()

    def kill_all_now(self) -> None:
        for adapter in self._all:
            adapter.kill_all_now()

    def batches(self, step: StepInstance, *, limit: int, started: Callable[[str, str], None],
                ended: Callable[[str, int | None, str], None]) -> Batches | None:
        return self._for(step).batches(step, limit=limit, started=started, ended=ended)

    def alive(self, keys: Sequence[str]) -> None:
        for adapter in self._all:
            if adapter.takes_reports:
                adapter.alive(keys)

    def serving(self, queues: Sequence[str]) -> None:
        for adapter in self._all:
            if adapter.takes_reports:
                adapter.serving(queues)

    def report(self, exit_file: str, exit_code: int) -> bool:
        return any(a.report(exit_file, exit_code) for a in self._all if a.takes_reports)
