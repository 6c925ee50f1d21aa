"""Stub ``sbatch``/``squeue``/``sacct``/``scancel`` for the Slurm adapter's fault tests.

One program, called as ``slurm_stub.py <command> ARGS...`` by the small wrappers the
``slurm_stub`` fixture puts first on ``PATH``. State is JSON in ``$SLURM_STUB_DIR``:
``jobs.json`` (id → name, comment, state, exit code, ``purged``), ``plan.json`` (scripted
behaviours, consumed in order) and ``calls.log`` (one JSON argv per call). Jobs never
run: tests move them between states with ``SlurmStub.set_job``. Messages and return
codes are Slurm 22.05's (tests/adapters/fixtures/README.md).

sbatch behaviours: ``ok``; ``transient`` (socket timeout, no job); ``unreachable``;
``ambiguous`` (the job is created, then the socket-timeout error); ``permanent``
(invalid partition); ``badtime`` (rc 255); ``limit`` (AssocMaxSubmitJobLimit);
``hang`` / ``hang_created`` (sleep 30 s, without / after creating the job); ``garbage``
(rc 0, no id). With ``{"random": {"seed": S, "transient": p, "ambiguous": q}}`` in the
plan, behaviours are drawn at random instead. squeue behaviours: ``ok``, ``fail``.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(os.environ["SLURM_STUB_DIR"])
SOCKET = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
MESSAGES = {
    "transient": (SOCKET, 1),
    "ambiguous": (SOCKET, 1),
    "unreachable": ("sbatch: error: Batch job submission failed: Unable to contact slurm "
                    "controller (connect failure)", 1),
    "permanent": ("sbatch: error: invalid partition specified: nopart\nsbatch: error: Batch "
                  "job submission failed: Invalid partition name specified", 1),
    "badtime": ("sbatch: error: Invalid --time specification", 255),
    "limit": ("sbatch: error: AssocMaxSubmitJobLimit\nsbatch: error: Batch job submission "
              "failed: Job violates accounting/QOS policy (job submit limit, user's size "
              "and/or time limits)", 1),
}


def load(name: str, default):
    path = ROOT / name
    return json.loads(path.read_text()) if path.exists() else default


def store(name: str, data) -> None:
    tmp = ROOT / f"{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, ROOT / name)


def next_behaviour(plan: dict, command: str) -> str:
    if command == "sbatch" and "random" in plan:
        cfg = plan["random"]
        rng = random.Random(f"{cfg['seed']}-{plan.get('drawn', 0)}")
        plan["drawn"] = plan.get("drawn", 0) + 1
        store("plan.json", plan)
        x = rng.random()
        if x < cfg.get("ambiguous", 0):
            return "ambiguous"
        if x < cfg.get("ambiguous", 0) + cfg.get("transient", 0):
            return "transient"
        return "ok"
    queue = plan.get(command, [])
    if not queue:
        return "ok"
    behaviour = queue.pop(0)
    store("plan.json", plan)
    return behaviour


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def create_job(args: list[str]) -> str:
    jobs = load("jobs.json", {})
    job_id = str(load("next_id.json", 100))
    store("next_id.json", int(job_id) + 1)
    script = Path(args[-1])
    name = script.name
    for line in script.read_text().splitlines():
        if line.startswith('#SBATCH --job-name="'):
            name = line.split('"')[1]
    jobs[job_id] = {"name": name, "comment": option(args, "--comment") or "",
                    "state": "PENDING", "exit": "0:0", "workdir": option(args, "-D"),
                    "purged": False}
    store("jobs.json", jobs)
    return job_id


def sbatch(args: list[str], plan: dict) -> int:
    behaviour = next_behaviour(plan, "sbatch")
    if behaviour in ("hang", "hang_created"):
        if behaviour == "hang_created":
            create_job(args)
        unlock()
        time.sleep(30)
        return 1
    if behaviour == "garbage":
        print("Submitted to somewhere")
        return 0
    if behaviour in ("ok", "ambiguous"):
        job_id = create_job(args)
        if behaviour == "ok":
            print(job_id)
            return 0
    message, rc = MESSAGES[behaviour]
    print(message, file=sys.stderr)
    return rc


def squeue(args: list[str], plan: dict) -> int:
    if next_behaviour(plan, "squeue") == "fail":
        print("squeue: error: slurm_load_jobs error: Unable to contact slurm controller "
              "(connect failure)", file=sys.stderr)
        return 1
    jobs = load("jobs.json", {})
    ids = option(args, "-j", "--jobs")
    wanted = ids.split(",") if ids else list(jobs)
    rows = [(i, jobs[i]) for i in wanted if i in jobs and not jobs[i]["purged"]]
    if ids and not rows:
        print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
        return 1
    for job_id, job in rows:
        print(f"{job_id}|{job['state']}|{job['comment'] or '(null)'}")
    return 0


def sacct(args: list[str], plan: dict) -> int:
    if plan.get("accounting") is False:
        print("Slurm accounting storage is disabled", file=sys.stderr)
        return 1
    jobs = load("jobs.json", {})
    ids = option(args, "-j", "--jobs")
    name = option(args, "--name")
    for job_id, job in jobs.items():
        if (ids and job_id not in ids.split(",")) or (name and job["name"] != name):
            continue
        if job.get("no_sacct"):
            continue
        state = "CANCELLED by 0" if job["state"] == "CANCELLED" else job["state"]
        print(f"{job_id}|{state}|{job['exit']}|{job['comment']}")
    return 0


def scancel(args: list[str], plan: dict) -> int:
    jobs = load("jobs.json", {})
    for job_id in args:
        job = jobs.get(job_id)
        if job and job["state"] in ("PENDING", "RUNNING"):
            job.update(state="CANCELLED", exit="0:15")
    store("jobs.json", jobs)
    return 0  # Slurm's scancel is silent and succeeds even for unknown ids


_LOCK = None


def unlock() -> None:
    if _LOCK is not None:
        fcntl.flock(_LOCK, fcntl.LOCK_UN)


def main() -> int:
    global _LOCK
    command, args = sys.argv[1], sys.argv[2:]
    _LOCK = open(ROOT / "lock", "a+")
    fcntl.flock(_LOCK, fcntl.LOCK_EX)  # one stub call at a time, like one slurmctld
    with open(ROOT / "calls.log", "a") as log:
        log.write(json.dumps([command, *args]) + "\n")
    plan = load("plan.json", {})
    handler = {"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scancel": scancel}[command]
    return handler(args, plan)


if __name__ == "__main__":
    sys.exit(main())
