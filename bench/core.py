"""The engine's own cost per step, without processes or files.

Runs a spec's study through ``StudyRuntime`` with a real embedded nats-server (events
published and routed back as in ``enginectl run``) but an adapter whose jobs end at once,
so what is left is the engine: decisions, four published events per step, the routing of
completions through NATS, the supervisor. Prints wall and CPU seconds of the run phase
(interpreter start, imports and spec expansion excluded).

    .venv/bin/python bench/core.py SPEC [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.base import Adapter, JobHandle, JobOutcome, JobRequest, JobResult  # noqa: E402
from engine import subjects  # noqa: E402
from engine.actors.study import StudyRuntime  # noqa: E402
from engine.bus import open_bus  # noqa: E402
from engine.log import configure_logging  # noqa: E402
from engine.natsserver import open_embedded_server  # noqa: E402
from engine.spec import load_study  # noqa: E402


class InstantAdapter(Adapter):
    """Every job starts and ends at once, successfully."""

    name = "local"

    def write_script(self, step: object) -> Path:  # type: ignore[override]
        """Nothing to write."""
        return Path("/dev/null")

    async def submit(self, request: JobRequest) -> JobHandle:
        return JobHandle(step=request.step.name, attempt=request.attempt, job_id="1",
                         backend=self.name)

    async def wait(self, handle: JobHandle) -> JobResult:
        await anyio.sleep(0)
        return JobResult(outcome=JobOutcome.COMPLETED, exit_code=0)

    async def cancel(self, handle: JobHandle) -> None:
        """Nothing runs."""


async def one_run(spec: str) -> tuple[float, float, int]:
    graph = load_study(spec, out_dir=tempfile.mkdtemp(prefix="troupe-core-"),
                       now=dt.datetime.now())
    with tempfile.TemporaryDirectory() as nats_dir:
        async with open_embedded_server(nats_dir, sync_always=False) as server:
            async with open_bus(server.url) as bus:
                await bus.ensure_stream(subjects.EVENTS_STREAM, [subjects.all_events()])
                runtime = StudyRuntime(
                    graph, study_id="core", bus=bus, adapter=InstantAdapter(),
                    limits={"global": 0, "adapter:local": 2}, policies={},
                )
                wall, cpu = time.perf_counter(), time.process_time()
                await runtime.run()
                return time.perf_counter() - wall, time.process_time() - cpu, len(graph.steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("spec")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    configure_logging(0)  # warnings only
    walls, cpus, n = [], [], 0
    for _ in range(args.runs):
        wall, cpu, n = anyio.run(one_run, args.spec)
        walls.append(wall)
        cpus.append(cpu)
    w, c = statistics.median(walls), statistics.median(cpus)
    print(f"{n} steps: median wall {w:.3f} s ({w / n * 1e3:.2f} ms per step), "
          f"CPU {c:.3f} s ({c / n * 1e3:.2f} ms per step) over {args.runs} runs")


if __name__ == "__main__":
    main()
