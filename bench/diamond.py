"""W3-style first measurement: one source, N parallel `true` steps, one sink.

Runs `enginectl run` (embedded NATS, durable JetStream, default throttle = CPUs) and a
plain asyncio floor that spawns the same N+2 processes through /bin/sh with the same
concurrency and dependency order, alternately (A B A B ...) so drift cancels out, and
prints the median wall time of each.

    .venv/bin/python bench/diamond.py [--n 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def spec_text(n: int) -> str:
    values = ", ".join(str(i) for i in range(n))
    return f"""description: {{name: diamond, description: one source, {n} parallel steps, one sink}}
study:
  - name: source
    description: source
    run: {{cmd: "true"}}
  - name: par
    description: "parallel $(I)"
    run: {{cmd: "true", depends: [source]}}
  - name: sink
    description: sink
    run: {{cmd: "true", depends: [par_*]}}
global.parameters:
  I: {{values: [{values}], label: "I.%%"}}
"""


async def floor(n: int, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "true")
            await proc.wait()

    await one()
    await asyncio.gather(*(one() for _ in range(n)))
    await one()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="troupe-bench-"))
    spec = work / "diamond.yaml"
    spec.write_text(spec_text(args.n))
    enginectl = [sys.executable, "-m", "engine", "run", str(spec)]
    times: dict[str, list[float]] = {"troupe": [], "floor": []}
    try:
        for i in range(args.runs + 1):  # the first pair is the warm-up
            out = work / f"study{i}"
            t = time.perf_counter()
            res = subprocess.run([*enginectl, "-o", str(out)], capture_output=True, text=True)
            troupe = time.perf_counter() - t
            if res.returncode != 0:
                raise SystemExit(f"enginectl failed: {res.stderr}")
            rows = (out / "status.csv").read_text().splitlines()[1:]
            if len(rows) != args.n + 2 or any(",FINISHED," not in r for r in rows):
                raise SystemExit("not every step FINISHED")
            t = time.perf_counter()
            asyncio.run(floor(args.n, cpus))
            fl = time.perf_counter() - t
            if i:
                times["troupe"].append(troupe)
                times["floor"].append(fl)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"diamond N={args.n}, throttle={cpus}, {args.runs} runs after a warm-up")
    print(f"  enginectl run (whole command) : {med['troupe']:.2f} s  runs={['%.2f' % x for x in times['troupe']]}")
    print(f"  asyncio floor                 : {med['floor']:.2f} s  runs={['%.2f' % x for x in times['floor']]}")
    print(f"  ratio                         : {med['troupe'] / med['floor']:.1f}x")


if __name__ == "__main__":
    main()
