"""``enginectl``: the command-line client.

``run`` runs one study to completion in this process (exit 0 finished, 2 failure,
3 cancelled); ``validate`` prints the expanded steps; ``graph`` draws them
(``engine.graphcli``). Bad input (a spec error, a bad
option or argument, an unreachable server) is one ``error:`` line on stderr and exit
code 1, never a traceback, for every command; set ``TROUPE_DEBUG=1`` to see the
traceback of an internal error.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from engine import __version__
from engine import log as _log  # noqa: F401  # first: it imports structlog without rich
from engine.bus import Credentials
from engine.errors import EngineError, printable

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {printable(message)}", err=True)  # one line, whatever it quotes
    sys.exit(code)


def _first_leaf(exc: BaseException) -> BaseException:
    """The first engine (else OS) error inside nested exception groups, else ``exc``."""
    if isinstance(exc, BaseExceptionGroup):
        for kind in (EngineError, OSError):
            sub: BaseException | None = exc.subgroup(kind)
            while isinstance(sub, BaseExceptionGroup):
                sub = sub.exceptions[0]
            if sub is not None:
                return sub
    return exc


def _friendly_errors(func: F) -> F:
    """Turn engine errors into one line + exit 1; internal errors likewise, unless
    ``TROUPE_DEBUG`` is set."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EngineError as exc:
            _fail(str(exc))
        except OSError as exc:
            if os.environ.get("TROUPE_DEBUG"):
                traceback.print_exc()
            _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence for the user
            leaf = _first_leaf(exc)  # a task group wraps what its tasks raised
            if isinstance(leaf, EngineError):
                _fail(str(leaf))
            if isinstance(leaf, OSError):
                _fail(f"{leaf.filename or ''}: {leaf.strerror or leaf}".lstrip(": "))
            if os.environ.get("TROUPE_DEBUG"):
                traceback.print_exc()
            _fail(f"internal error: {type(exc).__name__}: {exc} (set TROUPE_DEBUG=1 for details)")

    return wrapper  # type: ignore[return-value]


def _load(spec: str, out: str | None, pgen: str | None, pargs: Sequence[str],  # type: ignore[no-untyped-def]
          strict: bool = False, executor: str | None = None):
    from engine.spec import load_study

    graph = load_study(spec, out_dir=out, now=dt.datetime.now(), cwd=os.getcwd(), pgen=pgen,
                       pargs=pargs, executor=executor)
    for warning in graph.warnings:
        if strict and "unresolved token" in warning:
            _fail(f"{spec}: {printable(warning)} (--strict)")
        click.echo(f"warning: {printable(warning)}", err=True)
    return graph


_spec_arg = click.argument("spec", type=click.Path(dir_okay=False))
_pgen_opt = click.option("--pgen", "-p", type=click.Path(exists=True, dir_okay=False),
                         help="A Maestro custom parameter generator (Python file).")
_pargs_opt = click.option("--pargs", multiple=True, metavar="KEY:VALUE",
                          help="Argument for the parameter generator (repeatable).")
_samples_opt = click.option(
    "--samplesfile", type=click.Path(exists=True, dir_okay=False),
    help="A Merlin study's samples (.npy, .csv, .tab): replaces merlin.samples.file, and "
         "its generate command is not run (as merlin run --samplesfile).")
_strict_opt = click.option(
    "--strict", is_flag=True,
    help="An unresolved $(TOKEN) in a command is an error, not a warning.")
_out_opt = click.option("-o", "--out", type=click.Path(file_okay=False),
                        help="Study directory, used as given (no timestamp).")


def _study_opts(func: F) -> F:
    from engine.client import study_options

    return study_options(func)  # type: ignore[no-any-return]


def _credential_opts(func: F) -> F:
    from engine.client import credential_options

    return credential_options(func, suffix=" (with --nats-url)")  # type: ignore[no-any-return]


def _connection_opts(func: F) -> F:
    from engine.client import connection_options

    return connection_options(func)  # type: ignore[no-any-return]


class _Enginectl(click.Group):
    """The command group, with one exit-code convention for click's own errors too: a
    usage error (an unknown option, a missing argument, a directory as SPEC) is one
    ``error:`` line and exit 1, like any other bad input (click's default is exit 2,
    which is ``run``'s "the study failed")."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            if exc.ctx is not None and type(exc).__name__ == "NoArgsIsHelpError":
                click.echo(exc.ctx.get_help(), err=True)  # no command at all: the help
                sys.exit(1)
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(f"{exc.format_message()}{where}")
        except click.ClickException as exc:
            _fail(exc.format_message())
        except click.Abort:
            _fail("aborted")
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Enginectl, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="enginectl")
@click.option("-v", "--verbose", count=True, help="Log more to stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Troupe: run Maestro studies as event-driven actors over NATS."""
    from engine.log import configure_logging

    configure_logging(verbose)


@main.command()
@_spec_arg
@_out_opt
@_study_opts
@click.option("--nats-url", metavar="URL", help="Use this NATS server instead of an embedded one.")
@_credential_opts
@click.option("--local", "run_local", is_flag=True,
              help="Run steps that ask for nodes/procs here too, with $(LAUNCHER) removed.")
@click.option("--reuse", type=click.Path(exists=True, file_okay=False),
              help="Reuse the FINISHED steps of this earlier study whose cache keys match.")
@click.option("--no-cache", is_flag=True, help="Neither record nor reuse cache keys.")
@click.option("--kill-grace", type=click.FloatRange(min=0), default=None,
              help="Seconds between SIGTERM and SIGKILL when a step is stopped (default 10).")
@_samples_opt
@_strict_opt
@click.option("--per-sample-status", is_flag=True,
              help="status.csv: a row per sample of a sampled step (else one per state).")
@_pgen_opt
@_pargs_opt
@_friendly_errors
def run(spec: str, out: str | None, dry: bool, throttle: int | None, rlimit: int | None,
        attempts: int | None, nats_url: str | None, run_local: bool, reuse: str | None,
        no_cache: bool, kill_grace: float | None, samplesfile: str | None, strict: bool,
        per_sample_status: bool, pgen: str | None, pargs: tuple[str, ...],
        executor: str | None, **conn: Any) -> None:
    """Run the study in SPEC to completion; exit 0 finished, 2 failure, 3 cancelled."""
    from engine.client import read_credentials
    from engine.hosting import StudyOptions
    from engine.runner import RunOptions, default_progress_stream, run_study

    if any(conn.values()) and not nats_url:
        _fail("--user/--password-file/--token-file/--creds/--tls-ca need --nats-url")
    graph = _load(spec, out, pgen, pargs, strict, executor)
    study = StudyOptions(throttle=throttle, rlimit=rlimit, attempts=attempts,
                         kill_grace=kill_grace, dry_run=dry, run_local=run_local,
                         reuse=reuse or "", use_cache=not no_cache,
                         samples_file=os.path.abspath(samplesfile) if samplesfile else "",
                         per_sample_status=per_sample_status, strict=strict)
    opts = RunOptions(
        study=study, nats_url=nats_url, progress=default_progress_stream(), pgen=pgen,
        credentials=read_credentials(conn) if nats_url else Credentials(),
    )
    started = time.monotonic()
    _finish(graph, anyio.run(run_study, graph, opts), started)


def _finish(graph: Any, result: Any, started: float) -> None:
    """Say what failed (if anything) and how the study ended; exit with its code."""
    from engine.diagnose import failure_report
    from engine.progress import final_line

    for line in failure_report(graph.study_dir, result.failed):
        click.echo(line, err=True)
    click.echo(final_line(graph.name, result.state.value, time.monotonic() - started,
                          graph.study_dir), err=True)
    sys.exit(result.state.exit_code)


def restart_run(study_dir: str) -> None:
    """``enginectl restart DIR`` for a study of ``run`` whose run is over (killed, the
    machine rebooted, or ended FAILURE/CANCELLED): run it again in the same directory,
    keeping its FINISHED steps (``engine.runner.load_run``)."""
    from functools import partial

    from engine.runner import RunOptions, default_progress_stream, load_run, run_study

    graph, study, study_id, ended = load_run(study_dir)
    opts = RunOptions(study=study, progress=default_progress_stream())
    started = time.monotonic()
    _finish(graph, anyio.run(partial(run_study, graph, opts, ended=ended, study_id=study_id)),
            started)


@main.command()
@_spec_arg
@_out_opt
@_pgen_opt
@_pargs_opt
@click.option("--explain", is_flag=True,
              help="Also show each step's condition, funnels, race, throttle scopes and policies.")
@click.option("--reuse", type=click.Path(exists=True, file_okay=False),
              help="With --explain: say which steps this earlier study would provide (CACHED).")
@_samples_opt
@_strict_opt
@_friendly_errors
def validate(spec: str, out: str | None, pgen: str | None, pargs: tuple[str, ...],
             explain: bool, reuse: str | None, samplesfile: str | None, strict: bool) -> None:
    """Check SPEC and print its expanded steps, workspaces and dependencies."""
    from engine.settings import CliOverrides, step_policies

    graph = _load(spec, out, pgen, pargs, strict)
    step_policies(graph, CliOverrides())  # what `run` refuses next (an undeclared group...)
    root = Path(graph.study_dir)
    click.echo(f"{graph.name}: {len(graph.steps)} steps, study directory {root}")
    if graph.samples is not None:
        click.echo(f"  samples: {_samples_text(graph, samplesfile)}")
    by_name = graph.by_name
    cached: set[str] | None = None
    if explain and reuse:
        from engine.cache import cache_keys, load_previous

        keys, previous = cache_keys(graph), load_previous(reuse)
        cached = {n for n, k in keys.items() if n in previous and previous[n][0] == k}
    lines = []
    for inst in graph.steps:
        ws = os.path.relpath(inst.workspace, root)
        lines.append(f"  {inst.name}\n    workspace: {ws}\n    depends:   {_deps_text(inst, by_name)}")
        if explain:
            lines.append(_explain(inst, graph))
            if inst.race:
                lines.append(f"    race:      {inst.race}")
            if inst.group:
                lines.append(f"    group:     {inst.group} (throttle group)")
            if inst.group_by:
                values = ", ".join(f"{k}={v}" for k, v in inst.params if k in inst.group_by)
                lines.append(f"    group_by:  {', '.join(inst.group_by)} (this instance: {values})")
            if cached is not None:
                lines.append(f"    cached:    {'yes' if inst.name in cached else 'no'}")
    if explain:
        lines.append(f"picture: enginectl graph {printable(spec)} --format svg -o FILE "
                     "(or --format dot|png|mermaid, --instances)")
    click.echo("\n".join(lines))


def _explain(inst: Any, graph: Any) -> str:
    """``validate --explain``: how the engine will decide about one step."""
    from engine.settings import CliOverrides, adapter_name, step_policies

    pol = step_policies(graph, CliOverrides())[inst.name]
    condition = inst.when or "all dependencies FINISHED (Maestro's rule)"
    funnels = ", ".join(f"{f}_*" for f in inst.funnel_parents) or "-"
    restart = "unlimited" if pol.restart_limit == 0 else str(pol.restart_limit)
    walltime = f"{pol.walltime:g} s" if pol.walltime else "-"
    rows = [
        f"    when:      {condition}",
        f"    funnels:   {funnels}",
        f"    runs on:   {adapter_name(graph, inst)} (throttle scopes: {', '.join(pol.scopes)})",
        f"    walltime:  {walltime}; restarts: {restart}; attempts: {pol.retry.max_attempts}",
    ]
    if graph.merlin:
        rows.append(f"    merlin:    exit codes 100-105; max_retries {pol.max_retries}, "
                    f"retry_delay {pol.retry_delay:g} s")
    return "\n".join(rows)


def _samples_text(graph: Any, samplesfile: str | None) -> str:
    """How many samples the sampled steps run over, as far as validation can know."""
    from engine.spec.samples import read_samples

    spec = graph.samples
    sampled = sum(1 for s in graph.steps if s.sampled)
    file = samplesfile or spec.file
    if not os.path.exists(file):
        if spec.generate and not samplesfile:
            return (f"{sampled} step instance(s) run once per sample of {file}, made at run "
                    "time by merlin.samples.generate.cmd")
        _fail(f"{file}: the samples file does not exist")
    try:
        table = read_samples(file, spec.labels)
    except ValueError as exc:
        _fail(str(exc))
    return (f"{table.n} ({', '.join(spec.labels)}) from {file}; {sampled} step instance(s) "
            f"run once per sample: {table.n * sampled} runs")


def _deps_text(inst: Any, by_name: dict[str, Any]) -> str:
    """Dependencies for ``validate``: funnels summarised as ``X_* (N instances)``."""
    if not inst.parents:
        return "-"
    funnels = set(inst.funnel_parents)
    plain = [p for p in inst.parents if by_name[p].step not in funnels]
    parts = [f"{f}_* ({sum(1 for p in inst.parents if by_name[p].step == f)} instances)"
             for f in inst.funnel_parents]
    return ", ".join([*plain, *parts])


@main.command()
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Where the engine keeps its NATS store and client config "
                   "(default: $TROUPE_STATE_DIR or ~/.local/state/troupe).")
@click.option("--nats-url", metavar="URL", help="Use this NATS server (needs JetStream).")
@_credential_opts
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds running steps get to finish on SIGTERM.")
@click.option("--max-running", type=click.IntRange(min=0), default=0, show_default=True,
              help="At most this many jobs of all studies run at once (0: no limit); "
                   "changed live with 'enginectl throttle --engine N'.")
@click.option("--dashboard", "dashboard_port", type=click.IntRange(min=0, max=65535),
              default=None, metavar="PORT",
              help="Also serve the live dashboard on this port (0: any free port); its "
                   "address, with its token, is printed and kept in <state dir>/dashboard.json.")
@click.option("--dashboard-bind", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="The dashboard's listening address.")
@_friendly_errors
def serve(state_dir: str | None, nats_url: str | None, drain_timeout: float, max_running: int,
          dashboard_port: int | None, dashboard_bind: str, **conn: Any) -> None:
    """Run the engine until SIGTERM: studies are submitted to it over NATS."""
    from engine.client import default_state_dir, read_credentials
    from engine.daemon import serve_forever

    credentials = read_credentials(conn) if nats_url else Credentials()
    sock = None
    if dashboard_port is not None:
        if nats_url:
            _fail("--dashboard needs the embedded server's monitor user; with --nats-url, "
                  "run 'enginectl dashboard --nats-url URL --user USER' beside the engine")
        from engine.dashboard.server import bind_socket

        sock = bind_socket(dashboard_bind, dashboard_port)  # a busy port fails here, first
    anyio.run(lambda: serve_forever(Path(state_dir) if state_dir else default_state_dir(),
                                    nats_url=nats_url, credentials=credentials,
                                    drain_timeout=drain_timeout, max_running=max_running,
                                    dashboard=sock))


@main.command()
@click.option("--queues", default="default", show_default=True, metavar="Q1,Q2",
              help="The queues to take tasks from (a step's Merlin task_queue, else default).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Tasks run at once (default: the number of CPUs).")
@click.option("--name", default="", help="This worker's name (default: host-pid).")
@click.option("--heartbeat", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between two 'still working' signs for a running task.")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="A serve engine's state directory: its worker.json says how to connect "
                   "(default: $TROUPE_STATE_DIR or ~/.local/state/troupe).")
@click.option("--study", "study_dir", type=click.Path(file_okay=False),
              help="A study of 'enginectl run': its meta/worker.json says how to connect.")
@click.option("--nats-url", metavar="URL", help="Connect to this server instead.")
@_credential_opts
@_friendly_errors
def worker(queues: str, concurrency: int | None, name: str, heartbeat: float,
           state_dir: str | None, study_dir: str | None, nats_url: str | None,
           **conn: Any) -> None:
    """Take step tasks from JetStream queues and run them (troupe.executor: workers),
    until SIGTERM: the running tasks end first (a second SIGTERM kills them)."""
    from engine.client import default_state_dir, read_credentials, resolve_connection
    from engine.worker import run_worker

    names = [q.strip() for q in queues.split(",") if q.strip()]
    if not names:
        _fail("--queues: name at least one queue")
    if nats_url:
        url, creds = nats_url, read_credentials(conn)
    else:
        where = (Path(study_dir) / "meta" if study_dir
                 else Path(state_dir) if state_dir else default_state_dir())
        url, creds = resolve_connection({"client_file": str(where / "worker.json")})
    anyio.run(lambda: run_worker(url, creds, queues=names,
                                 concurrency=concurrency or os.cpu_count() or 1, name=name,
                                 heartbeat=heartbeat))


@main.command(name="run-workers")
@_spec_arg
@click.option("--echo", is_flag=True, help="Print the worker commands instead of starting them.")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="The workers connect to this serve engine (its worker.json).")
@click.option("--study", "study_dir", type=click.Path(file_okay=False),
              help="The workers connect to this study of 'enginectl run' (its meta/worker.json).")
@click.option("--nats-url", metavar="URL", help="The workers connect to this server.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Where each worker's log goes (<name>.worker.log).")
@click.option("--batch", "as_jobs", is_flag=True,
              help="Submit each worker as a Slurm job running inside its allocation.")
@_friendly_errors
def run_workers(spec: str, echo: bool, state_dir: str | None, study_dir: str | None,
                nats_url: str | None, log_dir: str, as_jobs: bool) -> None:
    """Start the workers SPEC's merlin.resources.workers asks for (Merlin's run-workers):
    one 'enginectl worker' each, serving the queues of its steps, in the background."""
    import shlex
    import subprocess

    from engine.runworkers import plan_workers

    connect = (["--study", os.path.abspath(study_dir)] if study_dir else
               ["--state-dir", os.path.abspath(state_dir)] if state_dir else
               ["--nats-url", nats_url] if nats_url else [])
    enginectl = [sys.executable, "-m", "engine"]
    for plan in plan_workers(spec):
        if echo:
            click.echo(shlex.join(["enginectl", *plan.argv([], connect)]))
            continue
        log = Path(log_dir).absolute() / f"{plan.name}.worker.log"
        if as_jobs:  # the pilot job: sbatch runs the worker inside its allocation
            script = log.with_suffix(".sbatch")
            script.write_text(plan.sbatch_script(plan.argv(enginectl, connect), str(log)))
            done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True,
                                  text=True, timeout=60)
            if done.returncode != 0:
                _fail(f"sbatch {script}: {done.stderr.strip() or done.returncode}")
            click.echo(f"submitted worker {plan.name} as Slurm job "
                       f"{done.stdout.strip().split(';')[0]}: queues {', '.join(plan.queues)}; "
                       f"log {log}")
            continue
        with open(log, "ab") as out:
            proc = subprocess.Popen(plan.argv(enginectl, connect), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, start_new_session=True)
        click.echo(f"started worker {plan.name} (pid {proc.pid}): queues "
                   f"{', '.join(plan.queues)}; log {log}")


@main.command()
@click.option("--server", "server_only", is_flag=True,
              help="Only check the NATS server answers (a worker's health), not the engine.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds to wait for the answer.")
@_connection_opts
@_friendly_errors
def ping(server_only: bool, timeout: float, **conn: Any) -> None:
    """Check the engine answers requests (exit 0) or not (exit 1): a container's health
    check. The request is a status request that selects no study."""
    from engine import subjects
    from engine.bus import open_bus
    from engine.client import resolve_connection
    from engine.errors import BusError
    from engine.messages import StatusReply, StatusRequest, new_event_id

    url, creds = resolve_connection(conn)

    async def body() -> str:
        started = anyio.current_time()
        with anyio.fail_after(timeout + 3.0):  # connecting included
            async with open_bus(url, creds, connect_timeout=min(timeout, 2.0),
                                name="enginectl ping", max_reconnect_attempts=0) as bus:
                if server_only:
                    await bus.flush(timeout=timeout)
                    what = "the NATS server answers"
                else:
                    # A state no study is in: the engine answers, listing no study.
                    reply = await bus.request(subjects.api("status"), StatusRequest(
                        event_id=new_event_id(), state="PING"), timeout=timeout)
                    if not isinstance(reply, StatusReply) or not reply.ok:
                        raise BusError(f"the engine answered with an error: {reply!r}")
                    what = "the engine answers"
        return f"{what} ({url}, {(anyio.current_time() - started) * 1000:.0f} ms)"

    try:
        click.echo(anyio.run(body))
    except TimeoutError:
        _fail(f"no answer from {url} within {timeout:g} s")


def _register_client_commands() -> None:
    from engine.client import client_commands
    from engine.graphcli import graph

    for command in [*client_commands(), graph]:
        subcommands = command.commands.values() if isinstance(command, click.Group) else ()
        for cmd in (command, *subcommands):
            if cmd.callback is not None:
                cmd.callback = _friendly_errors(cmd.callback)  # type: ignore[arg-type]
        main.add_command(command)


_register_client_commands()
