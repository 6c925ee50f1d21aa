"""Issue 7 benchmark harness: Troupe side by side with the floor and its peers.

One command runs every workload for every available column, prints a table, and writes
``bench/results/latest.md`` and ``bench/results/latest.json``:

    bash bench/setup_peers.sh              # once: Parsl, Snakemake, Dask into bench/.venvs/
    .venv/bin/python bench/run.py          # everything (about 10-15 minutes on 2 cores)
    .venv/bin/python bench/run.py --runs 3 --workloads W2-100 --columns floor,troupe-run

Workloads (every step's command is ``echo x > "$OUT/<step>.out"`` with OUT a literal,
fresh directory per run; a run is checked by the set of ``.out`` files it left, and a run
that did not produce them all is an error, not a number):

- W1-200, W1-1000: N independent steps (N explicit steps in the Maestro/Troupe spec);
- W2-100: a linear chain of 100 explicit steps;
- W3-500: one source, a step over a parameter with 500 values, one funnel sink;
- W4-200: a step over a parameter with 200 values (``global.parameters``), one funnel.

Columns (each timed as the whole command, interpreter start included):

- troupe-run: ``enginectl run SPEC -o DIR`` (embedded NATS, durable JetStream, defaults);
- troupe-run@baseline (with ``--baseline CHECKOUT``): the same with another checkout's
  ``enginectl`` (its own ``.venv``), alternating with troupe-run, to compare two versions;
- troupe-submit: ``enginectl submit SPEC -o DIR --wait --state-dir S`` to one
  ``enginectl serve --state-dir S`` started once for all runs (its RSS is the serve tree);
- floor: ``bench/floor.py`` (asyncio, /bin/sh -c, dependency order, concurrency = CPUs);
- maestro-s0: ``maestro run -fg -y -s 0`` (Maestro's default throttle, i.e. unlimited);
- maestro-s60: the same with Maestro's default 60 s poll, measured once, on W1-200 and
  W4-200 only (every dependency level costs up to a poll);
- parsl-threads: Parsl ``bash_app``s on a ThreadPoolExecutor(max_threads = CPUs);
- parsl-htex: the same on a HighThroughputExecutor (LocalProvider, one block, CPUs workers);
- snakemake: ``snakemake --cores 2`` (shell.executable /bin/sh);
- dask: dask.distributed LocalCluster(n_workers = CPUs, threads_per_worker = 1), one
  ``subprocess.run(['/bin/sh', '-c', cmd])`` task per step, dependencies as futures.

Rounds: one warm-up round, then ``--runs`` measured rounds; within a round every column
runs once, in the same order, so each pair alternates (A B A B) and drift cancels out.
Peak RSS: the sum over the command's process tree (children found through /proc, sampled
every 0.2 s) and the largest single process (``wait4`` rusage, exact).

Extras (``--no-extras`` skips them): event latency of an external NATS subscriber during
W1-1000 submitted to serve; W4 with 10,000 values through ``enginectl run`` (wall, RSS);
``enginectl validate`` of a spec expanding to 100,000 instances (wall, RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
PY = sys.executable
ENGINECTL = str(Path(PY).parent / "enginectl")
MAESTRO = str(Path(PY).parent / "maestro")
CPUS = os.cpu_count() or 1
PAGE = os.sysconf("SC_PAGE_SIZE")

sys.path.insert(0, str(BENCH))
from workloads import DASK, PARSL, WORKLOADS, Workload, snakefile  # noqa: E402


# --------------------------------------------------------------------------- measurement

def _tree_rss(root: int) -> int:
    """Sum of RSS (bytes) of root and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        pid = int(entry)
        children.setdefault(ppid, []).append(pid)
        rss[pid] = pages * PAGE
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, ()))
    return total


class TreeSampler:
    """Samples the RSS of a process tree in a thread; .peak in bytes."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval, self.peak = root, interval, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(self.root))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def timed(argv: list[str], *, cwd: Path | None = None, timeout: float = 600,
          env: dict | None = None, rss_root: int | None = None, log: Path | None = None) -> dict:
    """Run argv; wall seconds, exit code, tree peak RSS, largest-process max RSS."""
    logf = open(log, "w") if log else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    sampler = TreeSampler(rss_root if rss_root is not None else proc.pid)
    deadline = t0 + timeout
    rc, ru = None, None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.perf_counter() > deadline:
            proc.kill()
            _, status, ru = os.wait4(proc.pid, 0)
            rc = "timeout"
            break
        time.sleep(0.002)
    wall = time.perf_counter() - t0
    proc.returncode = rc if isinstance(rc, int) else -9
    peak = sampler.stop()
    if log:
        logf.close()
    return {"wall": wall, "rc": rc, "tree_rss": peak, "max_rss": ru.ru_maxrss * 1024}


def check_outputs(w: Workload, out: Path) -> str | None:
    want = {f"{name}.out" for name, _ in w.steps()}
    have = {p.name for p in out.iterdir()} if out.is_dir() else set()
    missing = want - have
    if missing:
        return f"{len(missing)} of {len(want)} outputs missing"
    return None


# --------------------------------------------------------------------------- columns

class Serve:
    def __init__(self, work: Path):
        self.state = work / "serve-state"
        self.log = open(work / "serve.log", "w")
        self.proc = subprocess.Popen([ENGINECTL, "serve", "--state-dir", str(self.state)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        t = time.time()
        while not (self.state / "client.json").exists():
            if self.proc.poll() is not None or time.time() - t > 30:
                raise RuntimeError("enginectl serve did not start (see serve.log)")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def venv_python(peer: str) -> str | None:
    py = VENVS / peer / "bin" / "python"
    return str(py) if py.exists() and (VENVS / peer / ".ok").exists() else None


def run_column(col: str, w: Workload, run_dir: Path, ctx: dict, timeout: float) -> dict:
    """One run of one column on one workload, in a fresh run_dir."""
    run_dir.mkdir(parents=True)
    out = run_dir / "out"
    out.mkdir()
    log = run_dir / "log.txt"
    if col in ("troupe-run", "troupe-run@baseline", "troupe-submit", "maestro-s0",
               "maestro-s60"):
        spec = run_dir / "spec.yaml"
        spec.write_text(w.spec(out))
        study = run_dir / "study"
        if col in ("troupe-run", "troupe-run@baseline"):
            exe = ctx["baseline"] if col == "troupe-run@baseline" else ENGINECTL
            argv = [exe, "run", str(spec), "-o", str(study)]
            res = timed(argv, timeout=timeout, log=log)
        elif col == "troupe-submit":
            argv = [ENGINECTL, "submit", str(spec), "-o", str(study), "--wait",
                    "--state-dir", str(ctx["serve"].state)]
            res = timed(argv, timeout=timeout, log=log, rss_root=ctx["serve"].proc.pid)
            res["max_rss"] = None  # wait4 would only see the client
        else:
            sleep = col.removeprefix("maestro-s")  # maestro-s0, maestro-s60 (its default)
            argv = [MAESTRO, "run", "-fg", "-y", "-s", sleep, "-o", str(study), str(spec)]
            res = timed(argv, timeout=timeout, log=log)
    else:
        dag = run_dir / "dag.json"
        dag.write_text(json.dumps(w.dag(out)))
        if col == "floor":
            argv = [PY, str(BENCH / "floor.py"), str(dag)]
        elif col in ("parsl-threads", "parsl-htex"):
            script = run_dir / "wf.py"
            script.write_text(PARSL)
            argv = [ctx["py"]["parsl"], str(script), str(dag), str(run_dir / "runinfo"),
                    col.removeprefix("parsl-")]
        elif col == "dask":
            script = run_dir / "wf.py"
            script.write_text(DASK)
            argv = [ctx["py"]["dask"], str(script), str(dag), str(run_dir / "dask-tmp")]
        elif col == "snakemake":
            sf = run_dir / "Snakefile"
            sf.write_text(snakefile(w, out))
            sm = str(Path(ctx["py"]["snakemake"]).parent / "snakemake")
            argv = [sm, "--cores", "2", "-s", str(sf), "-d", str(run_dir / "smk")]
        else:
            raise ValueError(col)
        # The peer's own scripts (Parsl's interchange and worker pool) are found on PATH.
        env = {**os.environ, "PATH": f"{Path(argv[0]).parent}{os.pathsep}{os.environ['PATH']}"}
        res = timed(argv, cwd=run_dir, timeout=timeout, log=log, env=env)
    if res["rc"] != 0:
        res["error"] = f"exit {res['rc']} (log {log})"
    else:
        res["error"] = check_outputs(w, out)
    return res


ALL_COLUMNS = ["troupe-run", "troupe-submit", "floor", "maestro-s0", "maestro-s60",
               "parsl-threads", "parsl-htex", "snakemake", "dask"]
PEER_OF = {"parsl-threads": "parsl", "parsl-htex": "parsl", "snakemake": "snakemake",
           "dask": "dask"}
# Columns too slow to repeat: measured once (no warm-up), on these workloads only.
# Maestro's default 60 s poll makes each dependency level cost up to a minute (W2-100
# would take over an hour and a half).
ONCE_ONLY = {"maestro-s60": {"W1-200", "W4-200"}}


def versions(ctx: dict) -> dict:
    v = {"python": platform.python_version()}

    def meta(py: str, pkg: str) -> str:
        r = subprocess.run([py, "-c", f"import importlib.metadata as m; print(m.version({pkg!r}))"],
                           capture_output=True, text=True)
        return r.stdout.strip() or "?"

    v["troupe"] = meta(PY, "troupe")
    v["maestrowf"] = meta(PY, "maestrowf")
    for peer, pkg in [("parsl", "parsl"), ("snakemake", "snakemake"), ("dask", "distributed")]:
        if ctx["py"].get(peer):
            v[pkg] = meta(ctx["py"][peer], pkg)
    v["nats-server"] = subprocess.run([str(Path(PY).parent / "nats-server"), "--version"],
                                      capture_output=True, text=True).stdout.strip()
    return v


# --------------------------------------------------------------------------- extras

async def _latency(serve: Serve, w: Workload, run_dir: Path) -> dict:
    import nats  # nats-py, installed with troupe

    cfg = json.loads((serve.state / "client.json").read_text())
    nc = await nats.connect(cfg["url"], user=cfg.get("user"), password=cfg.get("password"))
    delays: list[float] = []
    fin: list[float] = []

    async def cb(msg) -> None:
        now = time.time()
        ev = json.loads(msg.data)
        if ev.get("type") == "step_state_changed":
            delays.append(now - ev["time"])
            if ev.get("state") == "FINISHED":
                fin.append(now - ev["time"])

    sub = await nc.subscribe("troupe.v1.events.>", cb=cb)
    await nc.flush()
    run_dir.mkdir(parents=True)
    out = run_dir / "out"
    out.mkdir()
    spec = run_dir / "spec.yaml"
    spec.write_text(w.spec(out))
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        ENGINECTL, "submit", str(spec), "-o", str(run_dir / "study"), "--wait",
        "--state-dir", str(serve.state),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    rc = await proc.wait()
    wall = time.perf_counter() - t0
    await asyncio.sleep(1.0)
    await sub.unsubscribe()
    await nc.close()
    err = f"exit {rc}" if rc else check_outputs(w, out)
    delays.sort()
    fin.sort()

    def pct(xs: list[float], p: float) -> float | None:
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else None

    return {"events": len(delays), "finished_events": len(fin), "wall": wall, "error": err,
            "p50_ms": pct(delays, 0.50), "p99_ms": pct(delays, 0.99),
            "max_ms": pct(delays, 1.0),
            "finished_p50_ms": pct(fin, 0.50), "finished_p99_ms": pct(fin, 0.99)}


def scale_sweep(work: Path, n: int, timeout: float) -> dict:
    w = Workload(f"W4-{n}", "sweep", n)
    res = run_column("troupe-run", w, work / f"scale-W4-{n}", {}, timeout)
    return res


def scale_validate(work: Path, n: int) -> dict:
    d = work / f"validate-{n}"
    d.mkdir()
    w = Workload(f"V-{n}", "sweep", n)
    spec = d / "spec.yaml"
    spec.write_text(w.spec(d / "out"))
    res = timed([ENGINECTL, "validate", str(spec), "-o", str(d / "study")], timeout=600)
    res["error"] = None if res["rc"] == 0 else f"exit {res['rc']}"
    res["instances"] = n + 1
    return res


# --------------------------------------------------------------------------- report

def mb(b) -> str:
    return "—" if b is None else f"{b / 2**20:.0f}"


def render(report: dict, ref: str = "floor") -> str:
    """The tables; ratios and the W2 overhead per edge are relative to column ``ref``."""
    cols, lines, the = report["columns"], [], "the floor" if ref == "floor" else ref
    lines.append(f"Median wall seconds over {report['runs']} runs after a warm-up "
                 f"(ratio to {the} in parentheses).\n")
    lines.append("| workload | " + " | ".join(cols) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in cols) + " |")
    for wk, per in report["results"].items():
        floor = per.get(ref, {}).get("median")
        cells = []
        for c in cols:
            r = per.get(c, {})
            if r.get("median") is None:
                cells.append(r.get("note") or r.get("error") or "—")
            elif floor and c != ref:
                cells.append(f"{r['median']:.2f} ({r['median'] / floor:.1f}x)")
            else:
                cells.append(f"{r['median']:.2f}")
        lines.append(f"| {wk} | " + " | ".join(cells) + " |")
    lines.append("\nPer column and workload: all runs, peak RSS of the process tree "
                 "(sampled every 0.2 s) and of its largest process (exact, wait4), MB.\n")
    lines.append(f"| workload | column | median (s) | runs (s) | ratio to {ref} | tree RSS | "
                 "largest process RSS | per edge (W2) |")
    lines.append("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for wk, per in report["results"].items():
        floor = per.get(ref, {}).get("median")
        for c in cols:
            r = per.get(c, {})
            if r.get("median") is None:
                lines.append(f"| {wk} | {c} | — | {r.get('note') or r.get('error') or '—'} "
                             "| | | | |")
                continue
            ratio = f"{r['median'] / floor:.2f}x" if floor else "—"
            edge = ""
            if wk.startswith("W2"):
                n = int(wk.split("-")[1])
                edge = f"{r['median'] / n * 1000:.1f} ms"
                if floor and c != ref:
                    edge += f" ({(r['median'] - floor) / n * 1000:.1f} ms over {ref})"
            lines.append(
                f"| {wk} | {c} | {r['median']:.2f} | {', '.join('%.2f' % x for x in r['runs'])} "
                f"| {ratio} | {mb(r.get('tree_rss'))} | {mb(r.get('max_rss'))} | {edge} |")
    ex = report.get("extras", {})
    if ex:
        lines.append("\nExtras (one run each):\n")
        lines.append("| item | result |")
        lines.append("| --- | --- |")
        lat = ex.get("event_latency")
        if lat:
            if lat.get("p50_ms") is not None and not lat.get("error"):
                lines.append(
                    f"| event latency, W1-1000 via serve, external subscriber | "
                    f"{lat['events']} step_state_changed events; p50 {lat['p50_ms']:.1f} ms, "
                    f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms; of them the "
                    f"{lat['finished_events']} FINISHED events: p50 "
                    f"{lat['finished_p50_ms']:.1f} ms, p99 {lat['finished_p99_ms']:.1f} ms "
                    f"(study wall {lat['wall']:.2f} s) |")
            else:
                lines.append(f"| event latency | error: {lat.get('error')} |")
        for key, label in [("sweep_10000", "W4 with 10,000 values, `enginectl run`"),
                           ("validate_100000", "`enginectl validate`, 100,001 instances")]:
            r = ex.get(key)
            if not r:
                continue
            if r.get("error"):
                lines.append(f"| {label} | error: {r['error']} |")
            else:
                lines.append(f"| {label} | wall {r['wall']:.2f} s; tree peak RSS "
                             f"{mb(r['tree_rss'])} MB; largest process {mb(r['max_rss'])} MB |")
    return "\n".join(lines) + "\n"


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="measured rounds (after one warm-up)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--columns", default=",".join(ALL_COLUMNS))
    ap.add_argument("--timeout", type=float, default=300, help="per run, seconds")
    ap.add_argument("--no-extras", action="store_true")
    ap.add_argument("--no-scale", action="store_true", help="skip the 10,000/100,000 items")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--baseline", default=None, metavar="CHECKOUT",
                    help="another checkout (with its own .venv) to time beside troupe-run, "
                         "in alternation: the column troupe-run@baseline")
    ap.add_argument("--workdir", default=None,
                    help="where runs write (default: a new directory under $TMPDIR)")
    args = ap.parse_args()
    cols = [c for c in args.columns.split(",") if c]
    wls = [WORKLOADS[k] for k in args.workloads.split(",") if k]

    ctx: dict = {"py": {p: venv_python(p) for p in ("parsl", "snakemake", "dask")}}
    if args.baseline:
        base = Path(args.baseline).resolve()
        ctx["baseline"] = str(base / ".venv" / "bin" / "enginectl")
        subprocess.run([str(base / ".venv" / "bin" / "python"), "-m", "compileall", "-q",
                        str(base / "engine"), str(base / "adapters")], check=True,
                       stdout=subprocess.DEVNULL)
        if "troupe-run@baseline" not in cols:
            cols.insert(cols.index("troupe-run") + 1 if "troupe-run" in cols else 0,
                        "troupe-run@baseline")
    notes: dict[str, str] = {}
    for c in cols:
        peer = PEER_OF.get(c)
        if peer and not ctx["py"][peer]:
            notes[c] = "not installed"
    RESULTS.mkdir(exist_ok=True)
    # An installed package has its bytecode; a checkout run with PYTHONDONTWRITEBYTECODE
    # would otherwise compile Troupe's modules at every start.
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "engine"), str(REPO / "adapters")],
                   check=True, stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="troupe-bench-", dir=args.workdir))
    started = dt.datetime.now(dt.timezone.utc)
    report: dict = {
        "command": " ".join([Path(PY).relative_to(REPO).as_posix()
                             if PY.startswith(str(REPO)) else PY, "bench/run.py", *sys.argv[1:]]),
        "started": started.isoformat(timespec="seconds"),
        "machine": {"nproc": CPUS, "platform": platform.platform(),
                    "mem_total_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1)},
        "load_before": uptime(), "runs": args.runs, "columns": cols,
        "versions": versions(ctx), "results": {}, "extras": {},
    }
    serve = Serve(work) if "troupe-submit" in cols or not args.no_extras else None
    ctx["serve"] = serve
    try:
        for w in wls:
            per = {c: {"runs": [], "tree_rss": 0, "max_rss": 0, "error": None,
                       "note": notes.get(c)} for c in cols}
            for rnd in range(args.runs + 1):
                for c in cols:
                    r = per[c]
                    if r["note"] or r["error"]:
                        continue
                    once = c in ONCE_ONLY
                    if once and (rnd != 1 or w.key not in ONCE_ONLY[c]):
                        if w.key not in ONCE_ONLY[c]:
                            r["note"] = "not run (too slow)"
                        continue
                    res = run_column(c, w, work / w.key / f"{c}-{rnd}", ctx,
                                     max(args.timeout, 900) if once else args.timeout)
                    tag = "warm-up" if rnd == 0 else f"run {rnd}"
                    print(f"{w.key:8} {c:14} {tag:8} {res['wall']:7.2f} s "
                          f"tree {mb(res['tree_rss']):>5} MB  "
                          f"{res['error'] or 'ok'}", flush=True)
                    if res["error"]:
                        r["error"] = f"error: {res['error']}"
                        continue
                    if rnd:
                        r["runs"].append(res["wall"])
                        r["tree_rss"] = max(r["tree_rss"], res["tree_rss"])
                        if res["max_rss"] is not None:
                            r["max_rss"] = max(r["max_rss"], res["max_rss"])
                        else:
                            r["max_rss"] = None
                    # Run directories are deleted only at the end: on a file system
                    # that avoids reusing recently freed inodes (ext4 without a journal,
                    # as here) deleting them would slow every later run's file creations
                    # (docs/performance.md).
            for c, r in per.items():
                r["median"] = statistics.median(r["runs"]) if r["runs"] and not r["error"] else None
            report["results"][w.key] = per
        if not args.no_extras:
            print("event latency: W1-1000 submitted to serve, external subscriber", flush=True)
            report["extras"]["event_latency"] = asyncio.run(
                _latency(serve, WORKLOADS["W1-1000"], work / "latency"))
            print(f"  {report['extras']['event_latency']}", flush=True)
            if not args.no_scale:
                print("scale: W4 with 10,000 values via enginectl run", flush=True)
                r = scale_sweep(work, 10_000, timeout=1200)
                report["extras"]["sweep_10000"] = r
                print(f"  wall {r['wall']:.2f} s tree {mb(r['tree_rss'])} MB "
                      f"largest {mb(r['max_rss'])} MB {r['error'] or 'ok'}", flush=True)
                print("scale: enginectl validate, 100,001 instances", flush=True)
                r = scale_validate(work, 100_000)
                report["extras"]["validate_100000"] = r
                print(f"  wall {r['wall']:.2f} s tree {mb(r['tree_rss'])} MB "
                      f"largest {mb(r['max_rss'])} MB {r['error'] or 'ok'}", flush=True)
    finally:
        if serve:
            serve.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    report["load_after"] = uptime()
    report["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    table = render(report)
    header = (f"`{report['command']}` — started {report['started']}, finished "
              f"{report['finished']}; {CPUS} CPUs, {report['machine']['mem_total_gib']} GiB; "
              f"load average before {report['load_before']}, after {report['load_after']}; "
              + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "\n\n")
    (RESULTS / "latest.md").write_text(header + table)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print()
    print(header + table)


if __name__ == "__main__":
    main()
