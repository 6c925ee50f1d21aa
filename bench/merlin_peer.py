"""Issue 18 benchmark: Merlin 1.13.0 with its Celery worker beside Troupe on 2 workers.

    bash bench/setup_peers.sh merlin        # once (the script runs it itself if needed)
    .venv/bin/python bench/merlin_peer.py [--runs 3] [--workloads W1-1000,W2-100,W4-200]
    .venv/bin/python bench/merlin_peer.py --runs 3 --runs-for W1-1000=1   # ~80 s a Merlin W1

Target: Troupe with 2 workers faster than Merlin with its Celery worker on every workload,
both measured here, in the same run, alternating. Columns:

- merlin: ``merlin run SPEC`` (it queues the study's tasks in Redis and exits) while one
  Celery worker, started before by ``merlin run-workers SPEC`` with ``args: -l INFO
  --concurrency 2`` (the spec's ``merlin:`` block), runs them. Timed from the start of
  ``merlin run`` until it has exited and every step's output exists (the end of the last
  step's command; Merlin's own bookkeeping after it, such as the MERLIN_FINISHED marker, is
  not waited for, and the queue is drained before the next run: ``drain`` in the json). The
  worker is started once per workload (warm-up included) and stopped afterwards (SIGTERM to
  its session, then SIGKILL). Its RSS: the sum over its session (Celery's main process and
  its 2 pool processes), sampled every 0.2 s during the runs; "largest process" is
  ``merlin run`` (wait4).
- workers-2x1: Troupe as ``bench/workers.py``'s column of that name (its functions are
  imported): ``enginectl run SPEC -o DIR -t 2 --executor workers --nats-url URL``, with one
  nats-server and two ``enginectl worker --concurrency 1`` started once, ready before any
  run and not timed; the run counts only if status.csv says every step FINISHED.
- floor: ``bench/floor.py`` (as ``bench/run.py``).

Every run writes into a fresh directory and counts only if every step's output exists.
Rounds as in ``bench/run.py``: a warm-up, then ``--runs`` rounds of every column in turn.

Set-up (idempotent): the Merlin used is the first of ``.venv-merlin`` (the test suite's
oracle, made by ``tests/run.sh``) and ``bench/.venvs/merlin`` whose ``merlin`` is 1.13.0 and
whose ``celery`` is older than 5.7 (with the 5.7.0 that ``pip install merlin==1.13.0``
pulls in, a chain never gets past its first step); if neither is, ``bench/setup_peers.sh
merlin`` makes the second (``merlin==1.13.0 celery<5.7``), leaving the oracle's venv as it
is. ``redis-server`` (Debian's package) is installed with apt-get when missing (as root).
A private ``redis-server --port P --save '' --appendonly no --dir TMP`` on a free loopback
port is Merlin's broker and results backend, stopped at the end whatever happens; its
``app.yaml`` is written into a private HOME (``TMP/home/.merlin``), so nothing reads or
touches the user's ``~/.merlin``. ``C_FORCE_ROOT=1`` is set when running as root (Celery
refuses to run a worker as root without it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
from run import (
    BENCH,
    CPUS,
    PAGE,
    PY,
    REPO,
    RESULTS,
    TreeSampler,
    check_outputs,
    mb,
    render,
    run_column,
    uptime,
    versions,
)
from workers import Daemon, Worker, cpu_model, run_once, start_nats
from workloads import WORKLOADS, Workload

COLUMNS = ["merlin", "workers-2x1", "floor"]
DEFAULT_WORKLOADS = "W1-1000,W2-100,W4-200"
QUEUE = "[merlin]_merlin"  # the queue of every step without a task_queue of its own
MERLIN_BLOCK = """merlin:
  resources:
    task_server: celery
    overlap: False
    workers:
      bench:
        args: -l INFO --concurrency 2
        steps: [all]
"""


# --------------------------------------------------------------------------- set-up

def _meta(py: Path, pkg: str) -> str:
    r = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version({pkg!r}))"],
                       check=False, capture_output=True, text=True)
    return r.stdout.strip()


def _usable(venv: Path) -> bool:
    py = venv / "bin" / "python"
    if not (venv / "bin" / "merlin").exists() or _meta(py, "merlin") != "1.13.0":
        return False
    celery = _meta(py, "celery")
    return bool(celery) and tuple(int(x) for x in celery.split(".")[:2]) < (5, 7)


def find_merlin() -> Path:
    """The bin directory of a Merlin 1.13.0 with celery < 5.7, installed if need be.

    Raises:
        RuntimeError: if ``bench/setup_peers.sh merlin`` could not install it.
    """
    for venv in (REPO / ".venv-merlin", BENCH / ".venvs" / "merlin"):
        if _usable(venv):
            return venv / "bin"
    subprocess.run(["bash", str(BENCH / "setup_peers.sh"), "merlin"], check=False)
    if not _usable(BENCH / ".venvs" / "merlin"):
        raise RuntimeError("could not install merlin==1.13.0 with celery<5.7 "
                           f"(see {BENCH / '.venvs' / 'merlin.log'})")
    return BENCH / ".venvs" / "merlin" / "bin"


def ensure_redis() -> str:
    """The path of redis-server, installed from Debian's package when missing (as root).

    Raises:
        RuntimeError: if it is missing and cannot be installed.
    """
    exe = shutil.which("redis-server")
    if exe is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(work: Path) -> tuple[Daemon, int]:
    """A private redis-server on a free loopback port, no persistence, its own directory."""
    port, rdir = _free_port(), work / "redis"
    rdir.mkdir()
    server = Daemon([ensure_redis(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(rdir)], work / "redis.log")
    try:
        server.wait_until(lambda: "Ready to accept connections" in server.logpath.read_text(),
                          "redis-server")
    except BaseException:
        server.stop()
        raise
    return server, port


def merlin_env(work: Path, port: int, bindir: Path) -> dict:
    """The environment of every merlin command: a private HOME holding its app.yaml."""
    home = work / "home"
    (home / ".merlin").mkdir(parents=True)
    redis = f"  name: redis\n  server: 127.0.0.1\n  port: {port}\n  db_num: 0\n"
    (home / ".merlin" / "app.yaml").write_text(
        f"broker:\n{redis}results_backend:\n{redis}"
        f"  encryption_key: {home / '.merlin' / 'encrypt_data_key'}\n")
    env = {**os.environ, "HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    if os.geteuid() == 0:
        env["C_FORCE_ROOT"] = "1"  # Celery will not start a worker as root without it
    return env


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


# --------------------------------------------------------------------------- merlin

def _session(sid: int) -> list[list[str]]:
    """The /proc/PID/stat fields (after the command name) of every process in session sid."""
    procs = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if entry.isdigit() and int(fields[3]) == sid:
            procs.append([entry, *fields])
    return procs


class SessionSampler(TreeSampler):
    """TreeSampler of every process in session ``root`` (the Celery worker is reparented to
    init once ``merlin run-workers`` exits, so its tree cannot be followed from a pid)."""

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for proc in _session(self.root):
                try:
                    with open(f"/proc/{proc[0]}/statm") as f:
                        total += int(f.read().split()[1]) * PAGE
                except OSError:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def cpu(self) -> float:
        """CPU seconds used so far by the session's processes and the children they reaped
        (the steps' shells): utime + stime + cutime + cstime."""
        ticks = sum(sum(int(x) for x in proc[12:16]) for proc in _session(self.root))
        return ticks / os.sysconf("SC_CLK_TCK")


class CeleryWorker:
    """``merlin run-workers SPEC`` in a session of its own; ready when Celery says so."""

    def __init__(self, spec: Path, env: dict, log: Path):
        self.log, self.logf = log, open(log, "w")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(["merlin", "run-workers", str(spec)], cwd=spec.parent,
                                     env=env, stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.sid = self.proc.pid
        t = time.time()
        while " ready." not in log.read_text():
            if time.time() - t > 120:
                self.stop()
                raise RuntimeError(f"the Celery worker is not ready (see {log})")
            time.sleep(0.05)
        self.sampler = SessionSampler(self.sid)

    def peak(self) -> int:
        """Peak RSS of the worker's session since it was ready, bytes; resets it."""
        p, self.sampler.peak = self.sampler.peak, 0
        return p

    def stop(self) -> None:
        """SIGTERM to the session's process group (Celery's warm shutdown), SIGKILL after 30 s."""
        if getattr(self, "sampler", None):
            self.sampler.stop()
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.sid, sig)
            except ProcessLookupError:
                break
            t = time.time()
            while time.time() - t < wait:
                try:
                    os.killpg(self.sid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self.proc.wait()
        self.logf.close()


def run_merlin(w: Workload, run_dir: Path, env: dict, port: int, worker: CeleryWorker,
               timeout: float) -> dict:
    """One ``merlin run``: wall until it has exited and every output exists, then drain."""
    out, spec, log = run_dir / "out", run_dir / "spec.yaml", run_dir / "log.txt"
    out.mkdir(parents=True)
    spec.write_text(w.spec(out) + MERLIN_BLOCK)
    want = len(w.steps())
    worker.peak()
    cpu0 = worker.sampler.cpu()
    with open(log, "w") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(["merlin", "run", str(spec)], cwd=run_dir, env=env,
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        rc, ru, queued, have = None, None, None, 0
        while True:
            if rc is None:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    rc, queued = os.waitstatus_to_exitcode(status), time.perf_counter() - t0
            if have < want:
                have = len(os.listdir(out))
            if rc is not None and (rc != 0 or have >= want):
                break
            if time.perf_counter() - t0 > timeout:
                if rc is None:
                    proc.kill()
                    _, _, ru = os.wait4(proc.pid, 0)
                rc = "timeout"
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
    res = {"wall": wall, "rc": rc, "queued": queued, "tree_rss": worker.peak(),
           "max_rss": ru.ru_maxrss * 1024 if ru else None,
           "run_cpu": ru.ru_utime + ru.ru_stime if ru else None}
    res["error"] = (f"exit {rc} (log {log})" if rc != 0 else check_outputs(w, out))
    # The next run starts on an empty queue: wait until nothing is queued or unacknowledged.
    t = time.perf_counter()
    while time.perf_counter() - t < 120:
        if redis_cli(port, "llen", QUEUE) == "0" and redis_cli(port, "hlen", "unacked") == "0":
            break
        time.sleep(0.05)
    else:
        res["error"] = res["error"] or "the queue did not drain in 120 s"
    res["drain"] = time.perf_counter() - t
    res["worker_cpu"] = worker.sampler.cpu() - cpu0  # after the drain: the whole run's
    return res


# --------------------------------------------------------------------------- main

def verdicts(report: dict) -> str:
    got = []
    for wk, per in report["results"].items():
        m, t = per.get("merlin", {}).get("median"), per.get("workers-2x1", {}).get("median")
        if m and t:
            got.append(f"{wk}: Troupe 2 workers {t:.2f} s, Merlin {m:.2f} s, Merlin/Troupe "
                       f"{m / t:.1f}x ({'met' if t < m else 'missed'})")
        else:
            got.append(f"{wk}: not measured (error)")
    return "; ".join(got) + "."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="measured rounds (after one warm-up)")
    ap.add_argument("--runs-for", action="append", default=[], metavar="KEY=N",
                    help="measured rounds for one workload (e.g. W1-1000=1), repeatable")
    ap.add_argument("--workloads", default=DEFAULT_WORKLOADS)
    ap.add_argument("--timeout", type=float, default=600, help="per run, seconds")
    ap.add_argument("--workdir", default=None,
                    help="where runs write (default: a new directory under $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=str(RESULTS / "merlin-peer"), metavar="PREFIX",
                    help="writes PREFIX.md and PREFIX.json (default bench/results/merlin-peer)")
    args = ap.parse_args()
    wls = [WORKLOADS[k] for k in args.workloads.split(",") if k]
    runs = {w.key: args.runs for w in wls} | {k: int(n) for k, n in
                                              (x.split("=") for x in args.runs_for)}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop every daemon
    bindir = find_merlin()
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "engine"), str(REPO / "adapters")],
                   check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="troupe-merlin-", dir=args.workdir))
    py = Path(PY).relative_to(REPO).as_posix() if PY.startswith(str(REPO)) else PY
    vers = versions({"py": {}})
    vers.update({p: _meta(bindir / "python", p) for p in ("merlin", "celery", "kombu", "redis")})
    report: dict = {
        "command": " ".join([py, "bench/merlin_peer.py", *sys.argv[1:]]),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_before": uptime(),
        "runs": f"{args.runs} ({', '.join(args.runs_for)})" if args.runs_for else args.runs, "columns": COLUMNS, "results": {},
        "merlin_venv": str(bindir.parent), "workers": {},
    }
    redis = nats = celery = None
    workers: list[Worker] = []
    try:
        redis, port = start_redis(work)
        env = merlin_env(work, port, bindir)
        vers["redis-server"] = subprocess.run([ensure_redis(), "--version"], check=False,
                                              capture_output=True, text=True).stdout.split()[2].removeprefix("v=")
        report["versions"] = vers
        nats, url = start_nats(work)
        workers = [Worker(f"w{i + 1}", url, work) for i in range(2)]
        for wk in workers:
            wk.ready()
        print(f"redis-server on port {port}; nats-server at {url}; Troupe workers ready",
              flush=True)
        for w in wls:
            per = {c: {"runs": [], "tree_rss": 0, "max_rss": 0, "error": None, "extra": []}
                   for c in COLUMNS}
            first = work / w.key / "merlin-workers"
            first.mkdir(parents=True)
            (first / "spec.yaml").write_text(w.spec(first / "out") + MERLIN_BLOCK)
            celery = CeleryWorker(first / "spec.yaml", env, first / "celery.log")
            for rnd in range(runs[w.key] + 1):
                for c in COLUMNS:
                    r, run_dir = per[c], work / w.key / f"{c}-{rnd}"
                    if r["error"]:
                        continue
                    if c == "merlin":
                        res = run_merlin(w, run_dir, env, port, celery, args.timeout)
                    elif c == "workers-2x1":
                        res = run_once(c, w, run_dir, url, args.timeout)
                    else:
                        res = run_column(c, w, run_dir, {}, args.timeout)
                    tag = "warm-up" if rnd == 0 else f"run {rnd}"
                    more = (f" (merlin run exited at {res['queued']:.2f} s, CPU "
                            f"{res['run_cpu']:.1f} s; worker CPU {res['worker_cpu']:.1f} s; "
                            f"drained {res['drain']:.2f} s later)"
                            if c == "merlin" and res["queued"] else "")
                    print(f"{w.key:8} {c:12} {tag:8} {res['wall']:7.2f} s{more}  "
                          f"{res['error'] or 'ok'}", flush=True)
                    if res["error"]:
                        r["error"] = f"error: {res['error']}"
                    elif rnd:
                        r["runs"].append(res["wall"])
                        r["extra"].append({k: res.get(k) for k in
                                           ("queued", "drain", "run_cpu", "worker_cpu")})
                        r["tree_rss"] = max(r["tree_rss"], res["tree_rss"] or 0)
                        r["max_rss"] = max(r["max_rss"], res["max_rss"] or 0)
            celery.stop()
            celery = None
            for r in per.values():
                r["median"] = statistics.median(r["runs"]) if r["runs"] and not r["error"] else None
            report["results"][w.key] = per
    finally:
        if celery:
            celery.stop()
        for wk in workers:
            report["workers"][wk.name] = wk.stop()
        for d in (nats, redis):
            if d:
                d.stop()
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = uptime()
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    mem = round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1)
    text = (
        "# Merlin with its Celery worker beside Troupe on 2 workers (issue 18)\n\n"
        f"- date (UTC): started {report['started']}, finished {report['finished']}\n"
        f"- machine: {CPUS} CPUs ({cpu_model()}), {mem} GiB, {platform.platform()}; load "
        f"average before {report['load_before']}, after {report['load_after']}\n"
        f"- command: `{report['command']}` (Merlin from {report['merlin_venv']})\n"
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + f"\n- target (Troupe on 2 workers faster than Merlin): {verdicts(report)}\n"
        "- RSS: for merlin, tree = the Celery worker's session (main + 2 pool processes), "
        "largest = `merlin run`; for workers-2x1, the `enginectl run` process tree (the two "
        "workers, over the whole benchmark: "
        + ", ".join(f"{n} {mb(max(x['tree_rss'] or 0, x['hwm'] or 0))} MB"
                    for n, x in report["workers"].items()) + ")\n\n"
        + render(report, ref="floor"))
    print()
    print(text)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0 if all(r.get("median") is not None for per in report["results"].values()
                    for r in per.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
