"""The floor: spawn a workflow's processes and nothing else.

Reads a DAG as JSON (a list of ``[name, cmd, [dependency names]]`` in dependency order),
runs every ``cmd`` through ``/bin/sh -c`` once all its dependencies have ended, at most
``os.cpu_count()`` at a time, and exits non-zero if any command failed.

    python bench/floor.py DAG.json
"""

from __future__ import annotations

import asyncio
import json
import os
import sys


async def main(dag: list) -> int:
    sem = asyncio.Semaphore(os.cpu_count() or 1)
    tasks: dict[str, asyncio.Task] = {}
    failed = 0

    async def one(cmd: str, deps: list[str]) -> None:
        nonlocal failed
        for d in deps:
            await tasks[d]
        async with sem:
            proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", cmd)
            if await proc.wait():
                failed += 1

    for name, cmd, deps in dag:
        tasks[name] = asyncio.ensure_future(one(cmd, deps))
    await asyncio.gather(*tasks.values())
    return 1 if failed else 0


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        sys.exit(asyncio.run(main(json.load(f))))
