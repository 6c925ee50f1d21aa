"""The floor of a Merlin samples study: N sample processes, then one collect process.

Spawns ``/bin/sh -c CMD`` N times, at most ``--jobs`` (default: the number of CPUs) at a
time, then ``/bin/sh -c COLLECT`` once every sample has ended; exits non-zero if any
process failed. Nothing else: no scripts, logs or status, so this is what any engine
running the same processes must at least spend.

    python bench/sample_floor.py N [--cmd true] [--collect true] [--asyncio]
    python bench/sample_floor.py N --dirs DIR     # each sample runs in its own directory

``--files`` (with ``--dirs``) also does each sample's file work as Merlin's layout has it:
the script ``sample.sh`` (``#!/bin/sh``, then the command) written in its directory and
executed there, its output in ``sample.out``/``sample.err`` there, and a
``MERLIN_FINISHED`` marker once it exited 0: the same processes and files as the study.

``--dirs DIR`` also creates Merlin's sample hierarchy under DIR (``level_max_dirs`` 25:
100,000 samples give ``00/00/00/00`` .. ``06/09/24/24``) and runs each sample with that
directory as its working directory; the default collect then counts the directories with
``$(MERLIN_GLOB_PATH)`` (one ``*/`` per level) and fails unless there are N.

Two loops: the default keeps CPUs children with ``os.posix_spawn`` and ``os.wait`` (the
least a parent can do); ``--asyncio`` uses ``asyncio.create_subprocess_exec`` like
``bench/floor.py``. Prints one line: ``N samples: W s wall (X ms per sample)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

SH = "/bin/sh"


def sample_paths(n: int, level_max_dirs: int = 25) -> list[str]:
    """Merlin's sample directories in sample order (common/sample_index.py)."""
    sizes = [1]
    while sizes[0] < n:
        sizes.insert(0, sizes[0] * level_max_dirs)
    del sizes[0]
    width = len(str(level_max_dirs))
    out = []
    for i in range(n):
        parts, rest = [], i
        for size in sizes:
            parts.append(str(rest // size).zfill(width))
            rest %= size
        out.append("/".join(parts))
    return out


def glob_path(n: int, level_max_dirs: int = 25) -> str:
    """``$(MERLIN_GLOB_PATH)`` for n samples: one ``*/`` per level."""
    levels, size = 0, 1
    while size < n:
        size *= level_max_dirs
        levels += 1
    return "*/" * max(levels, 1)


def spawn_loop(cmd: str, cwds: list[str | None], jobs: int, files: bool = False) -> int:
    """Run ``sh -c cmd`` once per cwd, ``jobs`` at a time; the number that failed.
    With ``files``, run each cwd's script with its output files, and mark it finished."""
    failed, running, todo = 0, 0, iter(cwds)
    env = os.environ
    here = os.getcwd()
    cwd_of: dict[int, str | None] = {}

    def reap() -> None:
        nonlocal failed, running
        pid, status = os.wait()
        running -= 1
        failed += status != 0
        where = cwd_of.pop(pid)
        if files and status == 0 and where is not None:
            os.close(os.open(os.path.join(where, "MERLIN_FINISHED"), os.O_WRONLY | os.O_CREAT, 0o644))

    for cwd in todo:
        if running == jobs:
            reap()
        if cwd is not None:
            os.chdir(cwd)  # posix_spawn has no cwd argument; the child inherits ours
        if files:
            fd = os.open("sample.sh", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
            os.write(fd, f"#!{SH}\n\n{cmd}\n".encode())
            os.close(fd)
            append = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            pid = os.posix_spawn("./sample.sh", ["./sample.sh"], env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, "sample.out", append, 0o644),
                (os.POSIX_SPAWN_OPEN, 2, "sample.err", append, 0o644)])
        else:
            pid = os.posix_spawn(SH, [SH, "-c", cmd], env)
        cwd_of[pid] = cwd
        running += 1
    os.chdir(here)
    while running:
        reap()
    return failed


async def asyncio_loop(cmd: str, cwds: list[str | None], jobs: int) -> int:
    failed = 0
    todo = iter(cwds)

    async def worker() -> None:
        nonlocal failed
        for cwd in todo:
            proc = await asyncio.create_subprocess_exec(SH, "-c", cmd, cwd=cwd)
            failed += await proc.wait() != 0

    await asyncio.gather(*(worker() for _ in range(jobs)))
    return failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("n", type=int, help="number of samples")
    ap.add_argument("--cmd", default="true", help="each sample's command (default: true)")
    ap.add_argument("--collect", default=None,
                    help="the collect command (default: true; with --dirs, count the dirs)")
    ap.add_argument("--dirs", metavar="DIR", default=None,
                    help="create Merlin's sample directories under DIR and run each sample there")
    ap.add_argument("--files", action="store_true",
                    help="with --dirs: each sample's script, output files and marker too")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--asyncio", action="store_true", help="asyncio subprocesses, not posix_spawn")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cwds: list[str | None]
    if args.dirs:
        root = os.path.abspath(args.dirs)
        cwds = [os.path.join(root, p) for p in sample_paths(args.n)]
        for d in cwds:
            os.makedirs(d)
        collect = args.collect or (
            f"test \"$(printf '%s\\n' {root}/{glob_path(args.n)} | wc -l)\" -eq {args.n}")
    else:
        cwds = [None] * args.n
        collect = args.collect or "true"
    if args.asyncio:
        failed = asyncio.run(asyncio_loop(args.cmd, cwds, args.jobs))
    else:
        failed = spawn_loop(args.cmd, cwds, args.jobs, files=bool(args.files and args.dirs))
    failed += spawn_loop(collect, [None], 1)
    wall = time.perf_counter() - t0
    print(f"{args.n} samples: {wall:.2f} s wall ({wall / max(args.n, 1) * 1e3:.3f} ms per "
          f"sample){f', {failed} failed' if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
