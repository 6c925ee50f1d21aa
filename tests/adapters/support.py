"""Helpers shared by the adapter tests: step instances, requests, the Slurm stub's state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapters.base import JobRequest
from engine.spec.graph import Resources, StepInstance

__all__ = ["FAKES", "FIXTURES", "SlurmStub", "make_step", "request"]

FAKES = Path(__file__).resolve().parent.parent / "fakes"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_step(ws_root: Path, name: str, cmd: str, *, description: str = "", restart: str = "",
              **resources: Any) -> StepInstance:
    """A step instance whose workspace is ``ws_root/<name>`` (created)."""
    ws = ws_root / name.replace(" ", "_")
    ws.mkdir(parents=True, exist_ok=True)
    return StepInstance(name=name, step=name, description=description, workspace=str(ws),
                        cmd=cmd, restart=restart, resources=Resources(**resources))


def request(step: StepInstance, attempt: int = 1, *, study: str = "study-1",
            restart: bool = False) -> JobRequest:
    """The engine's request for one attempt, with the engine's key format."""
    return JobRequest(step=step, attempt=attempt, key=f"{study}/{step.name}/{attempt}",
                      restart=restart)


class SlurmStub:
    """Handle on the stub Slurm commands of one test (see tests/fakes/slurm_stub.py)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def plan(self, *behaviours: str, squeue: tuple[str, ...] = (), **config: Any) -> None:
        """Script the next sbatch (and squeue) calls; ``config`` sets stub options."""
        data = {"sbatch": list(behaviours), "squeue": list(squeue), **config}
        (self.root / "plan.json").write_text(json.dumps(data))

    def jobs(self) -> dict[str, dict[str, Any]]:
        path = self.root / "jobs.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def set_job(self, job_id: str, **fields: Any) -> None:
        jobs = self.jobs()
        jobs[job_id].update(fields)
        (self.root / "jobs.json").write_text(json.dumps(jobs))

    def calls(self, command: str | None = None) -> list[list[str]]:
        path = self.root / "calls.log"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in rows if command is None or r[0] == command]
