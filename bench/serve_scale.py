"""Issue 18, item 4: 100,000-step studies submitted to a running ``enginectl serve``.

Starts ``enginectl serve --state-dir S`` (a fresh temporary state directory), then submits,
one after the other, with ``enginectl submit SPEC -o DIR`` (no ``--wait``: its ``follow``
asks for the study's full status, see below), each timed from the submit until the
prober's status shows the study ended (FINISHED, FAILURE or CANCELLED):

- ``w4``: W4 of ``bench/workloads.py`` with N parameter values (N steps ``w`` plus the
  funnel ``f``; built as ``bench/run.py``'s "W4 with 10,000 values" extra builds it);
- ``samples``: the Merlin study of ``bench/samples.py`` with N samples (``--samplesfile``).

Defaults as a user would have them: the engine's throttle (the number of CPUs), no
``--max-running``. While a study runs, a prober connected to the engine's NATS server
(``<state dir>/client.json``'s URL, user and password, with nats-py) sends the
``StatusRequest`` that ``enginectl status ID`` sends, one every ``--interval`` seconds
(0.05), and the one ``enginectl list`` sends (no study id) every ``--list-interval``
seconds (0.5). The status probe is by default ``--status summary``: the request with the
study's name (``enginectl list --name NAME``: its row and counts per state).
``--status full`` sends the study's id (``enginectl status ID``: every step), whose reply
is about 200 bytes a step; past about 41,000 steps it exceeds nats-server's 8 MB
max_payload; the engine now sends it a page at a time (``StatusRequest.limit``), and
before 2026-12-07 ``serve`` exited on it (docs/performance.md, issue 18 section). Each round trip is timed (request sent to reply received, not decoded) and
the reply decoded to check it is ``ok``. A request that fails or takes over 5 s is counted
as an error. RSS of the engine process (``/proc/PID/statm``) and of the serve tree (the
engine, its nats-server and the steps running at that moment; ``bench/run.py``'s
``_tree_rss``) is sampled every 0.2 s; the engine's and nats-server's VmHWM are read too.
After each study: the state directory's size (``du``; the JetStream store is in it).
(The client user of ``client.json`` may not list JetStream streams, so no event counts.)

    .venv/bin/python bench/serve_scale.py                      # both studies, N = 100,000
    .venv/bin/python bench/serve_scale.py --n 2000 --out /tmp/x  # a quick check
    .venv/bin/python bench/serve_scale.py --studies w4 --timeout 900

Writes ``bench/results/serve-scale.md`` and ``.json`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import msgspec
import nats
from run import ENGINECTL, PAGE, RESULTS, Serve, _tree_rss, check_outputs, uptime
from samples import child_named, prepare, vm_hwm
from workloads import Workload

from engine import subjects
from engine.messages import StatusReply, StatusRequest, new_event_id
from engine.messages.bus import BUS_DECODER, ENCODER

MB = 1024 * 1024


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


class Sampler:
    """Every 0.2 s: the engine process's RSS and the serve tree's, peaks and a series."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.nats_pid = child_named(pid, "nats-server")
        self.reset()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.engine_peak = self.tree_peak = self.nats_peak = 0
        self.series: list[tuple[float, int, int, int]] = []  # (s, engine, nats, tree) MB
        self.last = -10.0

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter() - self.t0
            e, tr = rss(self.pid), _tree_rss(self.pid)
            n = rss(self.nats_pid) if self.nats_pid else 0
            self.engine_peak = max(self.engine_peak, e)
            self.tree_peak = max(self.tree_peak, tr)
            self.nats_peak = max(self.nats_peak, n)
            if t - self.last >= 5.0:
                self.series.append((round(t, 1), e // MB, n // MB, tr // MB))
                self.last = t
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def du(path: Path) -> dict:
    """Bytes on disk (st_blocks) and apparent size of a tree, and of its first level."""
    def walk(p: Path) -> tuple[int, int, int]:
        disk = size = files = 0
        for root, _, names in os.walk(p):
            for name in names:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                disk += st.st_blocks * 512
                size += st.st_size
                files += 1
        return disk, size, files

    disk, size, files = walk(path)
    parts = {}
    for child in sorted(path.iterdir()):
        if child.is_dir():
            d, s, f = walk(child)
            parts[child.name] = {"disk": d, "size": s, "files": f}
    return {"disk": disk, "size": size, "files": files, "parts": parts}


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def summary(lat: list[float], errors: list[str], sizes: list[int]) -> dict:
    return {"count": len(lat), "errors": len(errors), "first_errors": errors[:5],
            "p50_ms": pct(lat, 0.50), "p90_ms": pct(lat, 0.90), "p99_ms": pct(lat, 0.99),
            "max_ms": max(lat) if lat else None,
            "reply_bytes_max": max(sizes) if sizes else None}


class Prober:
    """Status (one study) and list (every study) requests while a study runs."""

    def __init__(self, nc, interval: float, list_interval: float, mode: str, name: str):
        self.nc, self.interval, self.list_interval = nc, interval, list_interval
        self.mode, self.name = mode, name
        self.study_id = ""
        self.stop = asyncio.Event()
        self.res: dict[str, tuple[list[float], list[str], list[int]]] = {
            "status": ([], [], []), "list": ([], [], [])}
        self.last_state = ""
        self.last_counts: dict = {}

    async def _one(self, kind: str, msg: StatusRequest) -> None:
        lat, errs, sizes = self.res[kind]
        t = time.perf_counter()
        try:
            rep = await self.nc.request(subjects.api("status"), ENCODER.encode(msg), timeout=5.0)
        except Exception as exc:  # noqa: BLE001 (counted, whatever it is)
            errs.append(f"{time.perf_counter() - t:.2f} s: {type(exc).__name__}: {exc}")
            return
        dt_ms = (time.perf_counter() - t) * 1000
        try:
            reply = BUS_DECODER.decode(rep.data)
        except msgspec.DecodeError as exc:
            errs.append(f"undecodable reply: {exc}")
            return
        if not isinstance(reply, StatusReply) or not reply.ok:
            errs.append(f"not ok: {getattr(reply, 'error', reply)!r}"[:200])
            return
        lat.append(dt_ms)
        sizes.append(len(rep.data))
        if kind == "status" and reply.studies:
            self.last_state = reply.studies[0].state
            self.last_counts = dict(reply.studies[0].counts)

    async def _loop(self, kind: str, every: float) -> None:
        while not self.stop.is_set():
            t = time.perf_counter()
            if kind == "status":
                if self.mode == "summary":  # `enginectl list --name NAME`: counts only
                    await self._one(kind, StatusRequest(event_id=new_event_id(),
                                                        name=self.name))
                elif self.study_id:  # `enginectl status ID`: every step
                    await self._one(kind, StatusRequest(event_id=new_event_id(),
                                                        study_id=self.study_id))
            else:
                await self._one(kind, StatusRequest(event_id=new_event_id()))
            left = every - (time.perf_counter() - t)
            if left > 0:
                try:
                    await asyncio.wait_for(self.stop.wait(), left)
                except TimeoutError:
                    pass

    async def run(self) -> None:
        await asyncio.gather(self._loop("status", self.interval),
                             self._loop("list", self.list_interval))

    def report(self) -> dict:
        return {k: summary(*v) for k, v in self.res.items()}


async def run_study(key: str, n: int, work: Path, serve: Serve, sampler: Sampler, nc,
                    args) -> dict:
    d = work / key
    d.mkdir(parents=True)
    study = d / "study"
    check = None
    if key == "w4":
        w = Workload(f"W4-{n}", "sweep", n)
        out = d / "out"
        out.mkdir()
        spec = d / "spec.yaml"
        spec.write_text(w.spec(out))
        argv = [ENGINECTL, "submit", str(spec), "-o", str(study), "--state-dir", str(serve.state)]

        def check() -> str | None:
            return check_outputs(w, out)
    else:
        spec, samples = prepare(work, n)
        argv = [ENGINECTL, "submit", str(spec), "-o", str(study), "--state-dir", str(serve.state), "--samplesfile", str(samples)]

        def check() -> str | None:
            c = study / "collect" / "count.txt"
            got = c.read_text().strip() if c.exists() else "no count.txt"
            return None if got == str(n) else f"collect counted {got}, not {n}"

    name = f"sweep{n}" if key == "w4" else f"samples{n}"
    prober = Prober(nc, args.interval, args.list_interval, args.status, name)
    log = open(d / "submit.log", "w")  # noqa: ASYNC230, SIM115 (closed below)
    sampler.reset()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=log, stdin=asyncio.subprocess.DEVNULL)
    probe = asyncio.create_task(prober.run())
    line = await proc.stdout.readline()
    prober.study_id = line.decode().strip()
    t_id = time.perf_counter() - t0
    print(f"  {key}: study {prober.study_id} (id after {t_id:.2f} s)", flush=True)

    async def drain() -> None:
        async for raw in proc.stdout:
            log.write(raw.decode(errors="replace"))

    drainer = asyncio.create_task(drain())
    rc: int | str = "timeout"
    try:
        last_print = time.perf_counter()
        while True:
            await asyncio.sleep(0.02)
            now = time.perf_counter()
            if prober.last_state in ("FINISHED", "FAILURE", "CANCELLED"):
                rc = {"FINISHED": 0, "FAILURE": 2, "CANCELLED": 3}[prober.last_state]
                break
            if now - t0 > args.timeout or serve.proc.poll() is not None:
                rc = "timeout" if serve.proc.poll() is None else "engine exited"
                break
            if now - last_print >= 30:
                last_print = now
                print(f"    {now - t0:6.0f} s  {prober.last_state} {prober.last_counts}  "
                      f"engine {sampler.engine_peak // MB} MB", flush=True)
    finally:
        wall = time.perf_counter() - t0
        prober.stop.set()
        await probe
    await proc.wait()  # the submit client (it exited once the study was accepted)
    counts_at_end = dict(prober.last_counts)
    if rc == "timeout":
        # Cancel the study so that the engine is quiet for what follows.
        subprocess.run(  # noqa: ASYNC221 (the prober is stopped; nothing else waits)
            [ENGINECTL, "cancel", prober.study_id, "--state-dir", str(serve.state)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
        await asyncio.sleep(5)
    await drainer
    log.close()
    res = {"key": key, "n": n, "status_mode": args.status, "rc": rc, "wall": wall, "id_after": t_id,
           "study_id": prober.study_id, "counts_at_end": counts_at_end,
           "engine_rss_peak": sampler.engine_peak, "tree_rss_peak": sampler.tree_peak,
           "nats_rss_peak": sampler.nats_peak, "engine_hwm_so_far": vm_hwm(serve.proc.pid),
           "nats_hwm_so_far": vm_hwm(sampler.nats_pid) if sampler.nats_pid else None,
           "rss_series": list(sampler.series), "probes": prober.report()}
    res["error"] = (f"exit {rc} (log {d / 'submit.log'})" if rc != 0 else check())
    await asyncio.sleep(1.0)  # the study's last writes
    res["store"] = du(serve.state)
    res["engine_rss_after"] = rss(serve.proc.pid)
    return res


def mb(b) -> str:
    return "--" if b is None else f"{b / MB:.0f}"


def ms(x) -> str:
    return "--" if x is None else f"{x:.1f}"


def render(report: dict) -> str:
    lines = [f"# Serve at scale (issue 18, item 4) — {report['date']}", "",
             (f"Machine: {report['cpus']} CPUs; load before {report['load_before']}, after "
              f"{report['load_after']}. N = {report['n']:,}. State dir size before: "
              f"{mb(report['store_before']['disk'])} MB; engine RSS idle "
              f"{mb(report['engine_rss_idle'])} MB."), "",
             f"    {report['command']}", "",
             ("| study | wall | result | engine peak RSS | nats-server peak | serve tree peak "
              "| store after (disk) | status n / p50 / p99 / max (ms) "
              "| list n / p50 / p99 / max (ms) |"),
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in report["studies"]:
        s, li = r["probes"]["status"], r["probes"]["list"]
        lines.append(
            f"| {r['key']} ({r['n']:,}) | {r['wall']:.1f} s | {r['error'] or 'ok'} "
            f"| {mb(r['engine_rss_peak'])} MB | {mb(r['nats_rss_peak'])} MB "
            f"| {mb(r['tree_rss_peak'])} MB | {mb(r['store']['disk'])} MB "
            f"| {s['count']} / {ms(s['p50_ms'])} / {ms(s['p99_ms'])} / {ms(s['max_ms'])}"
            f"{' (' + str(s['errors']) + ' errors)' if s['errors'] else ''} "
            f"| {li['count']} / {ms(li['p50_ms'])} / {ms(li['p99_ms'])} / {ms(li['max_ms'])}"
            f"{' (' + str(li['errors']) + ' errors)' if li['errors'] else ''} |")
    for r in report["studies"]:
        lines += ["", f"## {r['key']}", "",
                  (f"- status probe: {r['status_mode']} (every {report['interval']} s); "
                   f"list every {report['list_interval']} s"),
                  (f"- study {r['study_id']}, exit {r['rc']}, counts at the last status: "
                   f"{r['counts_at_end']}"),
                  (f"- engine VmHWM {mb(r['engine_hwm_so_far'])} MB, nats-server VmHWM "
                   f"{mb(r['nats_hwm_so_far'])} MB (since serve started); engine RSS after "
                   f"{mb(r['engine_rss_after'])} MB"),
                  (f"- status reply: largest {r['probes']['status']['reply_bytes_max']} bytes; "
                   f"p90 {ms(r['probes']['status']['p90_ms'])} ms; first errors: "
                   f"{r['probes']['status']['first_errors']}"),
                  f"- list reply: largest {r['probes']['list']['reply_bytes_max']} bytes",
                  (f"- store: {mb(r['store']['disk'])} MB on disk, {r['store']['files']} files; "
                   + ", ".join(f"{k} {mb(v['disk'])} MB"
                               for k, v in r['store']['parts'].items())),
                  ("- RSS every 5 s (s: engine / nats-server / tree MB): "
                   + " ".join(f"{t:.0f}:{e}/{n}/{tr}" for t, e, n, tr in r["rss_series"]))]
    return "\n".join(lines) + "\n"


async def amain(args) -> dict:
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
              "cpus": os.cpu_count(), "n": args.n, "load_before": uptime(),
              "command": " ".join([".venv/bin/python", "bench/serve_scale.py", *sys.argv[1:]]),
              "work": str(work), "interval": args.interval,
              "list_interval": args.list_interval, "studies": []}
    serve = Serve(work)
    sampler = None
    try:
        await asyncio.sleep(1.0)
        sampler = Sampler(serve.proc.pid)
        report["engine_rss_idle"] = rss(serve.proc.pid)
        report["store_before"] = du(serve.state)
        cfg = json.loads((serve.state / "client.json").read_text())
        nc = await nats.connect(cfg["url"], user=cfg.get("user"),
                                password=cfg.get("password"), name="serve-scale-prober")
        try:
            for key in args.studies.split(","):
                print(f"{key}: N = {args.n:,}", flush=True)
                r = await run_study(key, args.n, work, serve, sampler, nc, args)
                s = r["probes"]["status"]
                print(f"  wall {r['wall']:.1f} s {r['error'] or 'ok'}; engine peak "
                      f"{mb(r['engine_rss_peak'])} MB, tree {mb(r['tree_rss_peak'])} MB; store "
                      f"{mb(r['store']['disk'])} MB; status p99 {ms(s['p99_ms'])} ms "
                      f"({s['count']}, {s['errors']} errors)", flush=True)
                report["studies"].append(r)
        finally:
            await nc.close()
    finally:
        if sampler:
            sampler.stop()
        serve.stop()
        report["load_after"] = uptime()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--studies", default="w4,samples", help="w4, samples or both (in order)")
    ap.add_argument("--timeout", type=float, default=900, help="per study, seconds")
    ap.add_argument("--interval", type=float, default=0.05, help="between status requests")
    ap.add_argument("--status", choices=["summary", "full"], default="summary",
                    help="status probe: the study's row and counts (StatusRequest with its "
                    "name, as 'enginectl list --name'), or every step (StatusRequest with "
                    "its id, as 'enginectl status ID'); see the module's doc")
    ap.add_argument("--list-interval", type=float, default=0.5, help="between list requests")
    ap.add_argument("--work", help="working directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--out", default=str(RESULTS), help="where serve-scale.md/.json go")
    args = ap.parse_args()
    report = asyncio.run(amain(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve-scale.json").write_text(json.dumps(report, indent=1))
    (out / "serve-scale.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
