"""Issue 15 benchmark: a study on ``enginectl worker`` processes against ``enginectl run``.

    .venv/bin/python bench/workers.py [--runs 3] [--workloads W1-1000,W2-100] [--out FILE]

Target (issue 15): W1-1000 and W2-100 through 2 workers (concurrency 1 each) at most 1.25x
the wall of ``enginectl run`` with throttle 2, W2's hand-off at most 5 ms per edge, each
worker's peak RSS at most 60 MB. Columns, each timed as the whole ``enginectl run SPEC -o
DIR`` command:

- run-t2: ``-t 2`` (its embedded NATS server): the reference;
- workers-2x1: ``--executor workers --nats-url URL -t 0``: URL is a nats-server (JetStream)
  this benchmark starts once; two ``enginectl worker --queues default --concurrency 1``,
  started once in their own directories and ready before any run, take every step (not
  timed). The workers bound the concurrency (2 tasks at a time), as Merlin's do: the
  engine queues every ready task at once. The target's column: the issue names the
  throttle for ``enginectl run``, and 2 workers of concurrency 1 for the other side;
- workers-2x1-t2: the same with the engine's throttle at 2 as well (``-t 2``): a task is
  queued only when one ends, so each slot waits for a round trip through the engine
  between two tasks. Shown beside, with its ratio (the stricter reading);
- run-t2-ext: ``-t 2 --nats-url URL``: the engine runs the steps, on the same server.

Each W2 column is also run on W2-1 (a chain of one step): W2's hand-off per edge is
(W2-100 - W2-1) / 99, the medians' difference, so that the study's start and end (about
0.2 s, the same for every column) are not counted as hand-off. The median wall over the
steps (wall / 100, as ``bench/run.py`` counts per edge) is shown too.

Rounds as in ``bench/run.py``: a warm-up, then ``--runs`` rounds of every column in turn
(A B C A B C ...). A run counts only if it exits 0, leaves every step's output and its
status.csv says FINISHED for every step. Per edge (W2): median wall / the chain's steps, as
``bench/run.py`` and docs/performance.md count it (the file times of the steps' outputs
would give the hand-off alone, but ext4 stamps them from a clock that ticks every 4 ms). Worker RSS: each worker's tree, sampled
every 0.1 s for the whole benchmark, and the worker's own VmHWM (exact); the target is
checked on the larger. A child caught between vfork and exec shares the worker's memory and
is not counted (a plain sum of RSS, as bench/run.py's tree RSS, counts it: shown too).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (CPUS, ENGINECTL, PAGE, PY, REPO, TreeSampler, check_outputs, mb, render,
                 timed, uptime, versions)
from workloads import WORKLOADS, Workload

NATS_SERVER = str(Path(PY).parent / "nats-server")
COLUMNS = ["run-t2", "workers-2x1", "workers-2x1-t2", "run-t2-ext"]
BASE, SUBJECT, STRICT, N_WORKERS = "run-t2", "workers-2x1", "workers-2x1-t2", 2
ONE = Workload("W2-1", "chain", 1)  # W2's start and end, without its hand-offs
MAX_RATIO, MAX_EDGE_MS, MAX_WORKER_MB = 1.25, 5.0, 60


# --------------------------------------------------------------------------- processes

class Daemon:
    """A long-lived process, its output in ``log``; stop(): SIGTERM, then wait for it."""

    def __init__(self, argv: list[str], log: Path, cwd: Path | None = None):
        self.logpath, self.log = log, open(log, "w")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def wait_until(self, ready, what: str, timeout: float = 60) -> None:
        t = time.time()
        while not ready():
            if self.proc.poll() is not None or time.time() - t > timeout:
                raise RuntimeError(f"{what} not ready (see {self.logpath})")
            time.sleep(0.05)

    def stop(self, grace: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_nats(work: Path) -> tuple[Daemon, str]:
    """One nats-server with JetStream on a free loopback port, for every run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    server = Daemon([NATS_SERVER, "-js", "-sd", str(work / "nats-store"), "-a", "127.0.0.1",
                     "-p", str(port)], work / "nats-server.log")
    try:
        server.wait_until(listening, "nats-server")
    except BaseException:
        server.stop()
        raise
    return server, f"nats://127.0.0.1:{port}"


def worker_rss(pid: int) -> tuple[int, int]:
    """RSS (bytes) of a worker and its descendants: without, and with, the children caught
    between vfork and exec (they share the worker's memory: a plain sum counts it twice)."""
    exe, total, shared, todo = os.readlink(f"/proc/{pid}/exe"), 0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            forked = p != pid and os.readlink(f"/proc/{p}/exe") == exe
            with open(f"/proc/{p}/statm") as f:
                rss = int(f.read().split()[1]) * PAGE
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(map(int, f.read().split()))
        except OSError:
            continue
        shared += rss if forked else 0
        total += 0 if forked else rss
    return total, total + shared


class WorkerSampler(TreeSampler):
    """TreeSampler of a worker: .peak as worker_rss counts it, .raw_peak the plain sum."""

    raw_peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, raw = worker_rss(self.root)
            except OSError:  # the worker is gone
                return
            self.peak, self.raw_peak = max(self.peak, rss), max(self.raw_peak, raw)
            self._stop.wait(self.interval)


class Worker(Daemon):
    """``enginectl worker --concurrency 1`` in its own directory, ready when started."""

    def __init__(self, name: str, url: str, work: Path):
        self.name = name
        (work / name).mkdir()
        super().__init__([ENGINECTL, "worker", "--nats-url", url, "--queues", "default",
                          "--concurrency", "1", "--name", name, "--heartbeat", "5"],
                         work / name / "worker.log", cwd=work / name)
        self.sampler: WorkerSampler | None = None

    def ready(self) -> None:
        self.wait_until(lambda: "ready" in self.logpath.read_text(), f"worker {self.name}")
        self.sampler = WorkerSampler(self.proc.pid, interval=0.1)

    def stop(self) -> dict:  # type: ignore[override]
        s, hwm = self.sampler, None
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:  # its own peak RSS, exact
                hwm = next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM:"))
        except OSError:
            pass
        res = {"tree_rss": s.stop() if s else None, "raw": s.raw_peak if s else None,
               "hwm": hwm}
        super().stop()
        return {**res, "rc": self.proc.returncode}


# --------------------------------------------------------------------------- one run

def check_status(w: Workload, study: Path) -> str | None:
    """None if status.csv lists every step FINISHED, else what is wrong."""
    try:
        with open(study / "status.csv", newline="") as f:
            # A parameterized step's instance is "w_I.7" in status.csv, "w_7" in the workload.
            states = {row["Step Name"].replace("_I.", "_"): row["State"]
                      for row in csv.DictReader(f)}
    except (OSError, KeyError) as exc:
        return f"status.csv unreadable: {exc}"
    bad = [f"{n}={states.get(n, 'absent')}" for n, _ in w.steps() if states.get(n) != "FINISHED"]
    return f"{len(bad)} steps not FINISHED in status.csv ({', '.join(bad[:3])})" if bad else None


def run_once(col: str, w: Workload, run_dir: Path, url: str, timeout: float) -> dict:
    out, study, log, spec = (run_dir / x for x in ("out", "study", "log.txt", "spec.yaml"))
    out.mkdir(parents=True)
    spec.write_text(w.spec(out))
    extra = {"workers-2x1": ["--executor", "workers", "--nats-url", url, "-t", "0"],
             "workers-2x1-t2": ["--executor", "workers", "--nats-url", url],
             "run-t2-ext": ["--nats-url", url]}.get(col, [])
    res = timed([ENGINECTL, "run", str(spec), "-o", str(study), "-t", "2", *extra],
                timeout=timeout, log=log)
    res["error"] = (f"exit {res['rc']} (log {log})" if res["rc"] != 0
                    else check_outputs(w, out) or check_status(w, study))
    return res


# --------------------------------------------------------------------------- report

def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), "?")


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def hand_off(results: dict, wk: str, col: str) -> float | None:
    """W2's hand-off per edge in ``col``, ms: (wall(W2-N) - wall(W2-1)) / (N - 1)."""
    n = int(wk.split("-")[1])
    many = results.get(wk, {}).get(col, {}).get("median")
    one = results.get(ONE.key, {}).get(col, {}).get("median")
    return (many - one) / (n - 1) * 1000 if many and one and n > 1 else None


def summary(report: dict) -> tuple[str, str]:
    """The targets line, and the tables of W2's hand-off and of the workers' RSS."""
    got, results = [], report["results"]
    for wk, per in results.items():
        if wk == ONE.key:
            continue
        base = per.get(BASE, {}).get("median")
        for col in (SUBJECT, STRICT):
            sub = per.get(col, {}).get("median")
            ratio = sub / base if base and sub else None
            tail = "" if col == SUBJECT else ", the stricter reading, not the target's column"
            got.append(f"{wk} {col}/{BASE} " + (f"{ratio:.2f}x (<= {MAX_RATIO}x: "
                       f"{verdict(ratio <= MAX_RATIO)}{tail})" if ratio else "not measured"))
        if wk.startswith("W2"):
            edge = hand_off(results, wk, SUBJECT)
            got.append(f"{wk} hand-off in {SUBJECT} " + (
                f"{edge:.1f} ms/edge (<= {MAX_EDGE_MS} ms: {verdict(edge <= MAX_EDGE_MS)})"
                if edge is not None else "not measured"))
    rows = []
    for wk in [k for k in results if k.startswith("W2") and k != ONE.key]:
        n = int(wk.split("-")[1])
        rows += [f"{wk}: hand-off per edge, (wall({wk}) - wall({ONE.key})) / {n - 1}, and "
                 f"the wall over the steps (wall / {n}), medians:\n",
                 f"| column | {wk} (s) | {ONE.key} (s) | hand-off per edge | wall / {n} |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for col, r in results[wk].items():
            edge, one = hand_off(results, wk, col), results[ONE.key].get(col, {})
            rows.append(f"| {col} | {r.get('median') or 0:.2f} | {one.get('median') or 0:.2f} "
                        f"| {'-' if edge is None else f'{edge:.1f} ms'} | "
                        f"{(r.get('median') or 0) / n * 1000:.1f} ms |")
        rows.append("")
    rows += ["Workers over the whole benchmark (warm-up included), peak RSS in MB:\n",
            "| worker | tree (sampled) | process (VmHWM) | tree, vfork children counted twice "
            "| exit |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in report["workers"].items():
        peak = max(x or 0 for x in (r["tree_rss"], r["hwm"]))
        got.append(f"{name} peak RSS {mb(peak)} MB (<= {MAX_WORKER_MB} MB: "
                   f"{verdict(peak <= MAX_WORKER_MB * 2**20)})")
        rows.append(f"| {name} | {mb(r['tree_rss'])} | {mb(r['hwm'])} | {mb(r['raw'])} "
                    f"| {r['rc']} |")
    return "; ".join(got) + ".", "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="measured rounds (after one warm-up)")
    ap.add_argument("--workloads", default="W1-1000,W2-100")
    ap.add_argument("--columns", default=",".join(COLUMNS))
    ap.add_argument("--timeout", type=float, default=300, help="per run, seconds")
    ap.add_argument("--workdir", default=None,
                    help="where runs write (default: a new directory under $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=None, metavar="FILE", help="write the results (markdown)")
    args = ap.parse_args()
    cols = [c for c in args.columns.split(",") if c]
    if unknown := set(cols) - set(COLUMNS):
        ap.error(f"unknown columns: {', '.join(sorted(unknown))}")
    wls = [{**WORKLOADS, ONE.key: ONE}[k] for k in args.workloads.split(",") if k]
    if any(w.kind == "chain" and w.n > 1 for w in wls) and ONE not in wls:
        wls.append(ONE)
    # SIGTERM unwinds like Ctrl-C, so that the workers and the server are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "engine"), str(REPO / "adapters")],
                   check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="troupe-workers-", dir=args.workdir))
    py = Path(PY).relative_to(REPO).as_posix() if PY.startswith(str(REPO)) else PY
    report: dict = {
        "command": " ".join([py, "bench/workers.py", *sys.argv[1:]]),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_before": uptime(), "runs": args.runs, "columns": cols,
        "versions": versions({"py": {}}), "results": {}, "workers": {},
    }
    server, workers, broken = None, [], True
    try:
        server, url = start_nats(work)
        workers = [Worker(f"w{i + 1}", url, work) for i in range(N_WORKERS)]
        for wk in workers:
            wk.ready()
        print(f"nats-server at {url}; workers ready: "
              + ", ".join(f"{x.name} (pid {x.proc.pid})" for x in workers), flush=True)
        for w in wls:
            per = {c: {"runs": [], "tree_rss": 0, "max_rss": 0, "error": None} for c in cols}
            for rnd in range(args.runs + 1):
                for c in cols:
                    r = per[c]
                    if r["error"]:
                        continue
                    res = run_once(c, w, work / w.key / f"{c}-{rnd}", url, args.timeout)
                    tag = "warm-up" if rnd == 0 else f"run {rnd}"
                    print(f"{w.key:8} {c:12} {tag:8} {res['wall']:7.2f} s "
                          f"tree {mb(res['tree_rss']):>5} MB  {res['error'] or 'ok'}", flush=True)
                    dead = [x.name for x in workers if x.proc.poll() is not None]
                    if dead:
                        raise RuntimeError(f"worker(s) {', '.join(dead)} exited (see their "
                                           f"worker.log under {work})")
                    if res["error"]:
                        r["error"] = f"error: {res['error']}"
                    elif rnd:
                        r["runs"].append(res["wall"])
                        r["tree_rss"] = max(r["tree_rss"], res["tree_rss"])
                        r["max_rss"] = max(r["max_rss"], res["max_rss"])
            for r in per.values():
                r["median"] = statistics.median(r["runs"]) if r["runs"] and not r["error"] else None
            report["results"][w.key] = per
        broken = any(r["error"] for per in report["results"].values() for r in per.values())
    finally:
        for wk in workers:
            report["workers"][wk.name] = wk.stop()
        if server:
            server.stop()
        if args.keep or broken:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = uptime()
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    targets, table = summary(report)
    mem = round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1)
    text = (f"# Distributed workers: {N_WORKERS} workers x concurrency 1 against "
            "`enginectl run -t 2` (issue 15)\n\n"
            f"- date (UTC): started {report['started']}, finished {report['finished']}\n"
            f"- machine: {CPUS} CPUs ({cpu_model()}), {mem} GiB, {platform.platform()}; load "
            f"average before {report['load_before']}, after {report['load_after']}\n"
            f"- command: `{report['command']}`\n"
            "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
            + f"\n- targets: {targets}\n\n" + render(report, ref=BASE) + "\n" + table)
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    ok = all(r.get("median") is not None for per in report["results"].values()
             for r in per.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
