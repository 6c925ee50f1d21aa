"""Merlin samples at scale: Troupe against the floor (and Merlin), plus validate's cost.

The study: one step ``sample`` over N samples (one column X, default N = 100,000) whose
command is ``true $(X)`` (mentioning the column is what makes a Merlin step run once per
sample), and a step ``collect`` that depends on ``sample_*`` and counts the sample
directories through ``$(sample.workspace)/$(MERLIN_GLOB_PATH)``. It fails unless there
are N of them, and writes the count to ``count.txt``. The samples come from a CSV passed
with ``--samplesfile``. A run counts only if it exits 0 and ``collect/count.txt`` says N.

    .venv/bin/python bench/samples.py                                  # troupe vs floor, N=100,000
    .venv/bin/python bench/samples.py --columns floor,floor-dirs --no-validate
    .venv/bin/python bench/samples.py --n 1000 --columns troupe,floor,merlin --no-validate
    .venv/bin/python bench/samples.py --validate-only                  # validate, 100k and 1M

Columns (each timed as the whole command, interpreter start included):

- troupe: ``enginectl run SPEC -o DIR --samplesfile F``;
- floor: ``bench/sample_floor.py N`` (N ``/bin/sh -c true`` at concurrency = CPUs with
  posix_spawn, then one collect process);
- floor-dirs: the same, each sample in its own directory of Merlin's hierarchy, which
  the floor creates first; its collect counts them as the study's does;
- floor-files: floor-dirs plus each sample's file work as Merlin's layout has it (its
  script written and executed in its directory, its output in two files there, a
  ``MERLIN_FINISHED`` marker after exit 0): the same processes and files as the study;
- merlin: ``merlin run --local SPEC --samplesfile F`` in the run directory (the spec's
  OUTPUT_PATH is ``./studies``; Merlin's in-process eager mode runs one sample after
  another). Meant for small N, e.g. 1,000. ``$MERLIN`` names the merlin command.

Rounds: ``--warmup`` unmeasured rounds, then ``--rounds`` measured ones. In each round every
column runs once, in the same order, so the columns alternate. Memory: the peak RSS of
the engine process itself (VmHWM from /proc/PID/status, polled every 50 ms; the kernel
keeps the maximum, so only growth in the last 50 ms before exit can be missed), the same
for its nats-server child, and the wait4 maximum over the process and everything it
reaped. Steps are never counted in the first two figures. For the floor columns the
"engine" is the floor's own Python process; Merlin runs everything in its one process.

Validate: ``enginectl validate SPEC -o DIR --samplesfile F`` for N in ``--validate-n``
(default 100,000 and 1,000,000): wall seconds and peak RSS, output to a log file.

Run directories are deleted only at the end (docs/performance.md, "The file system").
Writes ``bench/results/samples-latest.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable
ENGINECTL = str(Path(PY).parent / "enginectl")
MERLIN = os.environ.get("MERLIN", "/work/merlin-venv/bin/merlin")
CPUS = os.cpu_count() or 1
ALL_COLUMNS = ["troupe", "floor", "floor-dirs", "floor-files", "merlin"]


# --------------------------------------------------------------------------- files

def write_samples(path: Path, n: int) -> None:
    """N rows of one column: the row number (a sample's value is irrelevant to `true`)."""
    with open(path, "w") as f:
        f.writelines(f"{i}\n" for i in range(n))


def spec_text(n: int, samples: Path) -> str:
    # /bin/sh, as in the floor (and bench/workloads.py); valid for Merlin and Troupe.
    return f"""\
description:
    name: samples{n}
    description: {n} samples of `true`, then one collect step that counts their directories.

env:
    variables:
        OUTPUT_PATH: ./studies

batch:
    type: local
    shell: /bin/sh

study:
    - name: sample
      description: One sample.
      run:
          cmd: true $(X)

    - name: collect
      description: Count the sample directories.
      run:
          cmd: |
            printf '%s\\n' $(sample.workspace)/$(MERLIN_GLOB_PATH) | wc -l > count.txt
            test "$(cat count.txt)" -eq {n}
          depends: [sample_*]

merlin:
    samples:
        file: {samples}
        column_labels: [X]
"""


def prepare(work: Path, n: int) -> tuple[Path, Path]:
    d = work / f"inputs-{n}"
    if not d.exists():
        d.mkdir(parents=True)
        write_samples(d / "samples.csv", n)
        (d / "spec.yaml").write_text(spec_text(n, d / "samples.csv"))
    return d / "spec.yaml", d / "samples.csv"


# --------------------------------------------------------------------------- measurement

def vm_hwm(pid: int) -> int | None:
    """Peak resident set of one process, bytes (VmHWM), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process so far (not its children), or None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_named(pid: int, name: str) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and comm == name:
            return int(entry)
    return None


class HwmWatch:
    """Polls VmHWM of a process and of its nats-server child in a thread."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.engine = self.nats = 0
        self.cpu = 0.0  # the engine's own CPU seconds, as last seen
        self._nats_pid: int | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.engine = max(self.engine, vm_hwm(self.pid) or 0)
            self.cpu = max(self.cpu, cpu_seconds(self.pid) or 0.0)
            if self._nats_pid is None:
                self._nats_pid = child_named(self.pid, "nats-server")
            if self._nats_pid is not None:
                self.nats = max(self.nats, vm_hwm(self._nats_pid) or 0)
            self._stop.wait(self.interval)

    def stop(self) -> tuple[int, int | None]:
        self._stop.set()
        self._t.join()
        return self.engine, (self.nats if self._nats_pid is not None else None)


def timed(argv: list[str], log: Path, timeout: float, cwd: Path | None = None) -> dict:
    """Run argv; wall seconds, exit code, engine/nats VmHWM, wait4 maximum RSS."""
    with open(log, "w") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        watch = HwmWatch(proc.pid)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc: int | str = os.waitstatus_to_exitcode(status)
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, ru = os.wait4(proc.pid, 0)
                rc = "timeout"
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        proc.returncode = rc if isinstance(rc, int) else -9
        engine, nats = watch.stop()
    return {"wall": wall, "rc": rc, "engine_rss": engine, "nats_rss": nats,
            "max_rss": ru.ru_maxrss * 1024, "engine_cpu": watch.cpu}


def run_column(col: str, n: int, work: Path, run_dir: Path, timeout: float) -> dict:
    spec, samples = prepare(work, n)
    run_dir.mkdir(parents=True)
    log = run_dir / "log.txt"
    count: Path | None = None
    if col == "troupe":
        study = run_dir / "study"
        argv = [ENGINECTL, "run", str(spec), "-o", str(study), "--samplesfile", str(samples)]
        count = study / "collect" / "count.txt"
    elif col == "floor":
        argv = [PY, str(BENCH / "sample_floor.py"), str(n)]
    elif col == "floor-dirs":
        argv = [PY, str(BENCH / "sample_floor.py"), str(n), "--dirs", str(run_dir / "dirs")]
    elif col == "floor-files":
        argv = [PY, str(BENCH / "sample_floor.py"), str(n), "--dirs", str(run_dir / "dirs"),
                "--files", "--cmd", "true 0"]
    elif col == "merlin":
        argv = [MERLIN, "run", "--local", str(spec), "--samplesfile", str(samples)]
    else:
        raise ValueError(col)
    res = timed(argv, log, timeout, cwd=run_dir)
    if col == "merlin":
        found = glob.glob(str(run_dir / "studies" / "*" / "collect" / "count.txt"))
        count = Path(found[0]) if found else run_dir / "studies" / "missing"
    res["error"] = None
    if res["rc"] != 0:
        res["error"] = f"exit {res['rc']} (log {log})"
    elif count is not None:
        got = count.read_text().strip() if count.exists() else "no count.txt"
        if got != str(n):
            res["error"] = f"collect counted {got}, not {n} (log {log})"
    return res


def run_validate(n: int, work: Path, timeout: float) -> dict:
    spec, samples = prepare(work, n)
    d = work / f"validate-{n}"
    d.mkdir()
    argv = [ENGINECTL, "validate", str(spec), "-o", str(d / "study"), "--samplesfile",
            str(samples)]
    res = timed(argv, d / "log.txt", timeout)
    res["nats_rss"] = None
    text = (d / "log.txt").read_text(errors="replace")
    res["error"] = None
    if res["rc"] != 0:
        if "no such option" in text.lower() and "--samplesfile" in text:
            res["error"] = "validate has no --samplesfile option yet"
        else:
            res["error"] = f"exit {res['rc']}: {text.strip().splitlines()[-1:] or ''}"
    res["output_lines"] = text.count("\n")
    return res


# --------------------------------------------------------------------------- report

def mb(b: int | None) -> str:
    return "—" if not b else f"{b / 2**20:.0f}"


def render(report: dict) -> str:
    lines = [f"N = {report['n']:,} samples: median wall seconds over {report['rounds']} "
             f"rounds after {report['warmup']} warm-up round(s); {CPUS} CPUs. Engine CPU: the "
             "engine process's own user + system seconds (median; not its children). RSS in "
             "MB: the engine process's peak (VmHWM), its nats-server's, and the wait4 maximum "
             "over the command and all it reaped.\n",
             "| column | median (s) | runs (s) | ratio to floor | per sample (ms) | engine CPU (s) "
             "| engine RSS | nats-server RSS | wait4 max RSS |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    floor = report["results"].get("floor", {}).get("median")
    for col, r in report["results"].items():
        if r.get("median") is None:
            lines.append(f"| {col} | — | {r.get('error') or '—'} | | | | | | |")
            continue
        ratio = f"{r['median'] / floor:.2f}x" if floor else "—"
        lines.append(f"| {col} | {r['median']:.2f} | {', '.join(f'{x:.2f}' for x in r['runs'])} "
                     f"| {ratio} | {r['median'] / report['n'] * 1e3:.3f} "
                     f"| {statistics.median(r['cpu']) if r.get('cpu') else 0:.1f} | {mb(r['engine_rss'])} "
                     f"| {mb(r['nats_rss'])} | {mb(r['max_rss'])} |")
    if report.get("validate"):
        lines += ["\n`enginectl validate SPEC -o DIR --samplesfile F` (one run each):\n",
                  "| N | wall (s) | peak RSS (MB) | output lines | result |",
                  "| ---: | ---: | ---: | ---: | --- |"]
        for n, r in report["validate"].items():
            lines.append(f"| {int(n):,} | {r['wall']:.2f} | {mb(r['engine_rss'])} "
                         f"| {r['output_lines']} | {r['error'] or 'ok'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="samples (default 100,000)")
    ap.add_argument("--columns", default="troupe,floor",
                    help=f"comma-separated, of {','.join(ALL_COLUMNS)} (default troupe,floor)")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=0, help="unmeasured rounds first (default 0)")
    ap.add_argument("--timeout", type=float, default=3600, help="per run, seconds")
    ap.add_argument("--validate-n", default="100000,1000000",
                    help="sample counts for enginectl validate (default 100000,1000000)")
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--validate-only", action="store_true")
    ap.add_argument("--workdir", default=None, help="where runs write (default: under $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    cols = [] if args.validate_only else [c for c in args.columns.split(",") if c]
    for c in cols:
        if c not in ALL_COLUMNS:
            ap.error(f"unknown column {c!r}")
    if "troupe" in cols or not args.no_validate:
        subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "engine"),
                        str(REPO / "adapters")], check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="troupe-samples-", dir=args.workdir))
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report: dict = {"command": " ".join(["bench/samples.py", *sys.argv[1:]]),
                    "started": started, "n": args.n, "rounds": args.rounds,
                    "warmup": args.warmup, "nproc": CPUS, "platform": platform.platform(),
                    "load_before": os.getloadavg(), "results": {}, "validate": {}}
    per = {c: {"runs": [], "cpu": [], "engine_rss": 0, "nats_rss": None, "max_rss": 0, "error": None}
           for c in cols}
    try:
        for rnd in range(args.warmup + args.rounds):
            for c in cols:
                r = per[c]
                if r["error"]:
                    continue
                res = run_column(c, args.n, work, work / f"{c}-{rnd}", args.timeout)
                tag = "warm-up" if rnd < args.warmup else f"run {rnd - args.warmup + 1}"
                print(f"N={args.n} {c:10} {tag:8} {res['wall']:8.2f} s  engine "
                      f"{res['engine_cpu']:6.1f} s CPU {mb(res['engine_rss']):>5} MB  nats {mb(res['nats_rss']):>5} MB  "
                      f"{res['error'] or 'ok'}", flush=True)
                if res["error"]:
                    r["error"] = res["error"]
                elif rnd >= args.warmup:
                    r["runs"].append(res["wall"])
                    r["cpu"].append(res["engine_cpu"])
                    r["engine_rss"] = max(r["engine_rss"], res["engine_rss"])
                    r["max_rss"] = max(r["max_rss"], res["max_rss"])
                    if res["nats_rss"] is not None:
                        r["nats_rss"] = max(r["nats_rss"] or 0, res["nats_rss"])
        for c, r in per.items():
            r["median"] = statistics.median(r["runs"]) if r["runs"] and not r["error"] else None
        report["results"] = per
        if not args.no_validate:
            for n in (int(x) for x in args.validate_n.split(",") if x):
                res = run_validate(n, work, args.timeout)
                report["validate"][str(n)] = res
                print(f"validate N={n}: {res['wall']:.2f} s, peak RSS {mb(res['engine_rss'])} "
                      f"MB, {res['error'] or 'ok'}", flush=True)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = os.getloadavg()
    table = render(report)
    header = (f"`{report['command']}`, started {started}; {CPUS} CPUs; load average before "
              f"{' '.join(f'{x:.2f}' for x in report['load_before'])}, after "
              f"{' '.join(f'{x:.2f}' for x in report['load_after'])}\n\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "samples-latest.md").write_text(header + table)
    (RESULTS / "samples-latest.json").write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(header + table)


if __name__ == "__main__":
    main()
