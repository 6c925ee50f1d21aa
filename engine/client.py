"""The ``enginectl`` commands that talk to a running engine over NATS: submit, status,
list, watch, cancel, restart and events (``serve``, the engine itself, is ``engine.cli``'s
command and runs ``engine.daemon``).

A client finds the engine through ``<state dir>/client.json``, which ``serve`` writes with
mode 0600 once it answers requests: the URL, plus the user and password of its embedded
NATS server (only the URL when ``serve`` was given ``--nats-url``). ``--nats-url`` with the
credential options bypasses the file; a password is read from ``--password-file`` or
``$TROUPE_NATS_PASSWORD`` and a token from ``--token-file`` or ``$TROUPE_NATS_TOKEN``,
never taken on the command line (``ps`` shows it). A ``client.json`` that others can write
is refused (it names the server the client trusts). Connecting gives up after 4.5 s, and a request is
asked again while nobody serves it (an engine reconnecting after an outage) for up to 4 s
in all; either failure is one line on stderr and exit code 1. ``watch`` and
``submit --wait`` then follow the study's events with no deadline, and exit 0, 2 or 3 as
``run`` does (1 if the connection closes first).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import click
import msgspec

from engine import subjects
from engine.bus import Bus, Credentials, open_bus
from engine.errors import BusError, ConfigError, printable
from engine.messages import (
    AnyBusMessage,
    BusMessage,
    CancelSteps,
    ControlReply,
    EventsReply,
    EventsRequest,
    RestartRequest,
    SetThrottle,
    StatusReply,
    StatusRequest,
    StopWorkers,
    StudyState,
    SubmitReply,
    SubmitRequest,
    new_event_id,
)
from engine.samplestatus import query_samples
from engine.statedir import engine_alive
from engine.status import read_status

__all__ = ["PASSWORD_ENV", "TOKEN_ENV", "ask", "client_commands", "credential_options",
           "default_state_dir", "read_password", "read_secret", "resolve_connection",
           "status_all"]

_TIMEOUT = 4.0
READ_TIMEOUT = 30.0
"""Seconds a read-only request (status, events) is asked again while the engine is
silent: a cluster electing a new leader for the engine's store holds it up a while."""
_SUBMIT_TIMEOUT = 600.0  # a submit waits this long for a busy engine (it is idempotent)
PASSWORD_ENV = "TROUPE_NATS_PASSWORD"
TOKEN_ENV = "TROUPE_NATS_TOKEN"


def default_state_dir() -> Path:
    """``$TROUPE_STATE_DIR``, else ``$XDG_STATE_HOME/troupe``, else ``~/.local/state/troupe``."""
    if os.environ.get("TROUPE_STATE_DIR"):
        return Path(os.environ["TROUPE_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "troupe"


def read_secret(path: str | None, env: str, what: str = "password") -> str | None:
    """A secret: the first line of the file ``path`` if given, else ``$env``, else None.

    Raises:
        ConfigError: ``path`` cannot be read.
    """
    if path:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable {what} file: {exc}") from exc
        return text.splitlines()[0] if text else ""
    return os.environ.get(env) or None


def read_password(password_file: str | None) -> str | None:
    """The NATS password: ``password_file``'s first line, else ``$TROUPE_NATS_PASSWORD``."""
    return read_secret(password_file, PASSWORD_ENV)


def read_credentials(opts: dict[str, Any]) -> Credentials:
    """The credentials the options of :func:`credential_options` name."""
    return Credentials(user=opts.get("user"), password=read_password(opts.get("password_file")),
                       token=read_secret(opts.get("token_file"), TOKEN_ENV, "token"),
                       creds_file=opts.get("creds"), tls_ca=opts.get("tls_ca"))


def resolve_connection(opts: dict[str, Any]) -> tuple[str, Credentials]:
    """The URL and credentials a client command uses.

    Raises:
        ConfigError: no ``--nats-url`` and no readable client config, or an unreadable
            ``--password-file``.
    """
    if opts.get("nats_url"):
        return opts["nats_url"], read_credentials(opts)
    path = Path(opts.get("client_file") or Path(opts.get("state_dir") or default_state_dir())
                / "client.json")
    try:
        if path.stat().st_mode & 0o022:
            raise ConfigError(f"{path}: others can write it; not trusted (it should be 0600, "
                              "as 'enginectl serve' writes it)")
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no engine found: {path} does not exist (start one with "
                          "'enginectl serve', or give --nats-url)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable client config: {exc}") from exc
    pid = cfg.get("pid")
    if isinstance(pid, int) and cfg.get("host") == socket.gethostname() and not engine_alive(pid):
        if opts.get("client_file"):
            raise ConfigError(f"the 'enginectl run' of this study is over (last seen pid {pid})")
        raise ConfigError(f"no engine is running (last seen pid {pid}; start one with "
                          "'enginectl serve')")
    return cfg["url"], Credentials(user=cfg.get("user"), password=cfg.get("password"),
                                   tls_ca=cfg.get("tls_ca"))


def credential_options(func: Callable[..., Any], *, suffix: str = "") -> Callable[..., Any]:
    """Add --user, --password-file, --token-file, --creds and --tls-ca to a command; no
    secret is ever an argument (``ps`` shows arguments)."""
    for opt in reversed([
        click.option("--user", help=f"NATS user{suffix}."),
        click.option("--password-file", type=click.Path(dir_okay=False), metavar="FILE",
                     help=f"File holding the NATS password{suffix} (else ${PASSWORD_ENV})."),
        click.option("--token-file", type=click.Path(dir_okay=False), metavar="FILE",
                     help=f"File holding a NATS token{suffix} (else ${TOKEN_ENV})."),
        click.option("--creds", type=click.Path(exists=True, dir_okay=False),
                     help=f"NATS .creds file{suffix}."),
        click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False),
                     help=f"CA of a TLS server{suffix}."),
    ]):
        func = opt(func)
    return func


def study_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add how a study runs (``run`` and ``submit``): --dry, -t, -r, -a, --executor."""
    for opt in reversed([
        click.option("--dry", is_flag=True,
                     help="Write every script and mark steps DRYRUN; run nothing."),
        click.option("-t", "--throttle", type=click.IntRange(min=0), default=None,
                     help="Max steps running at once (0 = unlimited; default: the spec's "
                          "troupe.throttle, else the number of CPUs for local steps)."),
        click.option("-r", "--rlimit", type=click.IntRange(min=0), default=None,
                     help="Restarts of a timed-out step (default 1; 0 = unlimited)."),
        click.option("-a", "--attempts", type=click.IntRange(min=1), default=None,
                     help="Runs of a step that fails (default 1: no retry)."),
        click.option("--executor", type=click.Choice(["local", "workers"]), default=None,
                     help="Who runs the local steps: this engine ('local'), or 'enginectl "
                          "worker' processes taking them from queues ('workers'); "
                          "default: the spec's troupe.executor, else local."),
    ]):
        func = opt(func)
    return func


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --state-dir, --nats-url and the credential options to a command."""
    func = credential_options(func)
    for opt in reversed([
        click.option("--state-dir", type=click.Path(file_okay=False),
                     help="The engine's state directory (default: $TROUPE_STATE_DIR or "
                          "~/.local/state/troupe)."),
        click.option("--nats-url", metavar="URL", help="Talk to the engine through this server."),
    ]):
        func = opt(func)
    return func


def _conn_opts(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("state_dir", "nats_url", "user", "password_file", "token_file", "creds", "tls_ca")
    return {k: kwargs.pop(k) for k in keys}


async def _with_bus(opts: dict[str, Any], body: Callable[[Bus], Awaitable[int]]) -> int:
    url, creds = resolve_connection(opts)
    with anyio.fail_after(4.5):
        stack = open_bus(url, creds, connect_timeout=1.5, name="enginectl",
                         max_reconnect_attempts=0)
        bus = await stack.__aenter__()
    try:
        return await body(bus)
    finally:
        with anyio.CancelScope(shield=True):
            await stack.__aexit__(None, None, None)


async def status_all(bus: Bus, study: str) -> AnyBusMessage:
    """A study's status with every step: its pages (``StatusRequest.limit``) asked for
    in turn and joined. An error reply is returned as it is."""
    reply = await ask(bus, "status", StatusRequest(event_id=new_event_id(), study_id=study))
    if not isinstance(reply, StatusReply) or not reply.ok or not reply.studies:
        return reply
    steps = list(reply.steps)
    study = reply.studies[0].study_id
    while len(steps) < reply.total_steps:
        more = await ask(bus, "status", StatusRequest(event_id=new_event_id(), study_id=study,
                                                      offset=len(steps)))
        if not isinstance(more, StatusReply) or not more.ok:
            return more
        if not more.steps:
            break  # (fewer steps than it said: the study was replaced meanwhile)
        steps += more.steps
    return msgspec.structs.replace(reply, steps=tuple(steps))


async def ask(bus: Bus, verb: str, msg: BusMessage, *,
               timeout: float = _TIMEOUT, retry_silence: bool = False) -> AnyBusMessage:
    """Send an API request; while nobody serves it (an engine reconnecting to its NATS
    server after an outage), ask again for up to ``timeout`` seconds. With
    ``retry_silence`` (an idempotent request, such as a submit with its request id), an
    engine that is busy and does not answer in time is asked again too."""
    if verb in ("status", "events"):  # read-only, idempotent: asked again while silent
        retry_silence, timeout = True, max(timeout, READ_TIMEOUT)
    now = anyio.current_time()
    absent_deadline, deadline = now + _TIMEOUT, now + timeout
    while True:
        now = anyio.current_time()
        try:
            return await bus.request(subjects.api(verb), msg,
                                     timeout=max(min(deadline - now, _TIMEOUT), 0.1))
        except BusError as exc:
            # No engine at all: give up soon. A busy one (idempotent requests only): wait.
            absent = "nobody serves" in str(exc) and absent_deadline - now > 0.3
            busy = retry_silence and "no reply" in str(exc) and deadline - now > 0.3
            if absent or busy:
                await anyio.sleep(0.2)
                continue
            if "server refused" in str(exc):
                raise  # these credentials may not ask this: say so
            raise BusError(f"the engine did not answer ({exc}); is 'enginectl serve' "
                           "running?") from exc


def _run(opts: dict[str, Any], body: Callable[[Bus], Awaitable[int]]) -> None:
    try:
        code = anyio.run(_with_bus, opts, body)
    except TimeoutError:
        raise BusError("the engine's NATS server did not answer within 5 s") from None
    sys.exit(code)


def for_study(opts: dict[str, Any], ref: str) -> dict[str, Any]:
    """The connection for a study named by its directory: a study of ``enginectl run``
    is reached through its own server (``<study>/meta/client.json``, ``engine.runapi``)
    unless --nats-url or --state-dir says otherwise."""
    path = Path(ref or ".", "meta", "client.json")
    if ref and not opts.get("nats_url") and not opts.get("state_dir") and path.is_file():
        return {**opts, "client_file": str(path)}
    return opts


def study_ref(ref: str) -> str:
    """What a client sends for a study: its id, a unique prefix of one or its name as
    given; a study directory (an existing path) as an absolute path."""
    return os.path.abspath(ref) if ref and os.path.isdir(ref) else ref


def _fmt_time(ts: float | None) -> str:
    return "--" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Study directory, as given.")
@click.option("--wait", is_flag=True, help="Follow the study and exit 0/2/3 like run.")
@study_options
@click.option("--local", "run_local", is_flag=True,
              help="Run Slurm/Flux steps as local processes instead.")
@click.option("-p", "--pgen", type=click.Path(exists=True, dir_okay=False),
              help="A Maestro custom parameter generator (Python file).")
@click.option("--pargs", multiple=True, metavar="KEY:VALUE",
              help="Argument for the parameter generator (repeatable).")
@click.option("--reuse", type=click.Path(exists=True, file_okay=False),
              help="Reuse the FINISHED steps of this earlier study whose cache keys match.")
@click.option("--no-cache", is_flag=True, help="Neither record nor reuse cache keys.")
@click.option("--samplesfile", type=click.Path(exists=True, dir_okay=False),
              help="A Merlin study's samples, instead of merlin.samples (see run).")
@click.option("--per-sample-status", is_flag=True, help="status.csv: a row per sample.")
@click.option("--strict", is_flag=True, help="An unresolved $(TOKEN) is an error.")
@connection_options
def submit(spec: str, out: str | None, wait: bool, dry: bool, **kwargs: Any) -> None:
    """Submit SPEC to the running engine; print the study id."""
    opts = _conn_opts(kwargs)
    try:
        text = Path(spec).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{spec}: cannot read spec: {exc}") from exc
    req = SubmitRequest(
        event_id=new_event_id(), spec_text=text, spec_path=os.path.abspath(spec),
        cwd=os.getcwd(), out_dir=os.path.abspath(out) if out else "", dry_run=dry,
        throttle=kwargs["throttle"], rlimit=kwargs["rlimit"], attempts=kwargs["attempts"],
        run_local=kwargs["run_local"], pgen=os.path.abspath(kwargs["pgen"]) if kwargs["pgen"] else "",
        pargs=tuple(kwargs["pargs"]),
        reuse=os.path.abspath(kwargs["reuse"]) if kwargs["reuse"] else "",
        use_cache=not kwargs["no_cache"], request_id=os.urandom(12).hex(),
        samples_file=os.path.abspath(kwargs["samplesfile"]) if kwargs["samplesfile"] else "",
        per_sample_status=kwargs["per_sample_status"], strict=kwargs["strict"],
        executor=kwargs["executor"] or "",
    )

    async def body(bus: Bus) -> int:
        # The request id makes a retried submit safe: a busy engine (a big spec expands
        # for seconds) is asked again, and answers with the one study it made.
        reply = await ask(bus, "submit", req, timeout=_SUBMIT_TIMEOUT, retry_silence=True)
        if not isinstance(reply, SubmitReply) or not reply.ok:
            raise ConfigError(getattr(reply, "error", "submission refused"))
        for w in reply.warnings:
            click.echo(f"warning: {w}", err=True)
        click.echo(reply.study_id)
        from engine.follow import follow

        return await follow(bus, reply.study_id) if wait else 0

    _run(opts, body)


@click.command()
@click.argument("study_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--step", default="", metavar="STEP",
              help="List the samples of this sampled step (a name or glob; Merlin samples).")
@click.option("--state", default="", metavar="STATE",
              help="With --step: only the samples in this state (FAILED, FINISHED, ...).")
@connection_options
def status(study_id: str | None, as_json: bool, step: str, state: str, **kwargs: Any) -> None:
    """Show one study's steps, or every study with counts per state. STUDY_ID is an id,
    a unique prefix of one, a study's name or its directory; the directory of a study
    of 'enginectl run' is read from its status.csv (no engine needed)."""
    opts = _conn_opts(kwargs)
    if state and not step:
        raise ConfigError("--state needs --step (the sampled step whose samples to list)")
    if step:
        if not study_id:
            raise ConfigError("--step needs a study (its id or its directory)")
        if os.path.isdir(study_id):
            _print_samples(query_samples(study_id, step, state), as_json)
            return
    elif study_id and os.path.isfile(os.path.join(study_id, "meta", "run.json")):
        # A study of `run`: its status.csv, kept current while it runs; no engine needed.
        _print_status_csv(os.path.join(study_id, "status.csv"), as_json)
        return

    async def body(bus: Bus) -> int:
        ref = study_ref(study_id or "")
        reply = await (status_all(bus, ref) if ref else ask(
            bus, "status", StatusRequest(event_id=new_event_id())))
        if not isinstance(reply, StatusReply) or not reply.ok:
            raise ConfigError(getattr(reply, "error", "") or "status failed")
        if step:
            _print_samples(query_samples(reply.studies[0].study_dir, step, state), as_json)
            return 0
        if as_json:
            click.echo(msgspec.json.encode(reply).decode())
            return 0
        _print_studies(reply)
        if study_id:
            rows = [[s.step, s.state, s.job_id or "--", str(s.attempt), str(s.restarts),
                     _fmt_time(s.start_time), _fmt_time(s.end_time),
                     "--" if s.exit_code is None else str(s.exit_code),
                     printable(s.reason)[:60] or "--"] for s in reply.steps]
            click.echo(_table(rows, ["STEP", "STATE", "JOB ID", "ATTEMPTS", "RESTARTS",
                                     "START", "END", "EXIT", "REASON"]))
        return 0

    _run(opts, body)


def _print_status_csv(path: str, as_json: bool) -> None:
    """A study directory's ``status.csv`` (kept current by ``run`` and ``serve``), as a
    table (or JSON rows)."""
    try:
        rows = read_status(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable: {exc}") from exc
    if as_json:
        click.echo(json.dumps(rows))
        return
    keys = ["Step Name", "State", "Job ID", "Number Restarts", "Start Time", "End Time",
            "Run Time", "Workspace"]
    click.echo(_table([[printable(r.get(k, "")) for k in keys] for r in rows],
                      ["STEP", "STATE", "JOB ID", "RESTARTS", "START", "END", "RUN TIME",
                       "WORKSPACE"]))


def _print_samples(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows))
        return
    labels = list(rows[0]["values"]) if rows else []
    table = [[r["step"], str(r["sample"]), r["path"], r["state"] + (" (soft)" if r["soft"] else ""),
              *(r["values"][k] for k in labels)] for r in rows]
    click.echo(_table(table, ["STEP", "SAMPLE", "PATH", "STATE", *labels]))
    click.echo(f"{len(rows)} samples", err=True)


def _print_studies(reply: StatusReply) -> None:
    rows = [[s.study_id, s.name, s.state, ", ".join(f"{n} {k}" for k, n in sorted(s.counts.items())),
             s.study_dir] for s in reply.studies]
    click.echo(_table(rows, ["STUDY", "NAME", "STATE", "STEPS", "DIRECTORY"]))
    for s in reply.studies:
        if s.error:
            click.echo(f"{s.study_id}: not hosted: {s.error!r}")


@click.command(name="list")
@click.option("--state", default=None, type=click.Choice([s.value for s in StudyState],
                                                         case_sensitive=False),
              help="Only studies in this state.")
@click.option("--name", default="", help="Only studies whose name matches this glob.")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: the engine's status reply as JSON.")
@connection_options
def list_(state: str | None, name: str, as_json: bool, **kwargs: Any) -> None:
    """List studies."""
    opts = _conn_opts(kwargs)

    async def body(bus: Bus) -> int:
        reply = await ask(bus, "status", StatusRequest(event_id=new_event_id(),
                                                        state=(state or "").upper(), name=name))
        assert isinstance(reply, StatusReply)
        if as_json:
            click.echo(msgspec.json.encode(reply).decode())
        else:
            _print_studies(reply)
        return 0

    _run(opts, body)


@click.command()
@click.argument("study_id")
@connection_options
def watch(study_id: str, **kwargs: Any) -> None:
    """Follow a study live; exit with its code (0 finished, 2 failure, 3 cancelled)."""
    from engine.follow import follow

    _run(for_study(_conn_opts(kwargs), study_id), lambda bus: follow(bus, study_ref(study_id)))


def _control(verb: str, make: Callable[[], BusMessage]) -> Callable[[Bus], Awaitable[int]]:
    async def body(bus: Bus) -> int:
        reply = await ask(bus, verb, make())
        assert isinstance(reply, ControlReply)
        if not reply.ok:
            raise ConfigError(reply.detail or f"{verb} refused")
        click.echo(reply.detail)
        return 0
    return body


@click.command()
@click.argument("study_id")
@click.option("--step", "glob", default="", help="Only the steps matching this glob.")
@connection_options
def cancel(study_id: str, glob: str, **kwargs: Any) -> None:
    """Cancel a study, or its steps matching --step GLOB (and their descendants)."""
    _run(for_study(_conn_opts(kwargs), study_id), _control("cancel", lambda: CancelSteps(
        event_id=new_event_id(), study_id=study_ref(study_id), glob=glob,
        reason="cancelled by enginectl")))


@click.command()
@click.argument("study_id")
@connection_options
def restart(study_id: str, **kwargs: Any) -> None:
    """Run a study's failed, cancelled and timed-out steps again, keeping FINISHED ones.
    STUDY_ID may be the directory of a study of 'enginectl run' whose run is over (killed,
    or ended): it runs again there, in this process, like 'run'."""
    opts = _conn_opts(kwargs)
    if (os.path.isfile(os.path.join(study_id, "meta", "run.json"))
            and not opts.get("nats_url") and not opts.get("state_dir")):
        from engine.cli import restart_run

        restart_run(study_id)
        return
    _run(opts, _control("restart", lambda: RestartRequest(
        event_id=new_event_id(), study_id=study_ref(study_id))))


@click.command()
@click.argument("args", nargs=-1, metavar="STUDY LIMIT | --engine LIMIT")
@click.option("--scope", default="global", show_default=True, metavar="SCOPE",
              help="What to throttle: global, adapter:<local|slurm|flux> or group:<name>.")
@click.option("--engine", "engine_wide", is_flag=True,
              help="Set the engine-wide limit across all studies (serve --max-running).")
@connection_options
def throttle(args: tuple[str, ...], scope: str, engine_wide: bool, **kwargs: Any) -> None:
    """Set how many of a running study's steps may run at once, live (LIMIT 0: no limit);
    with --engine, how many jobs of all the engine's studies may."""
    if len(args) != (1 if engine_wide else 2):
        raise ConfigError("usage: enginectl throttle STUDY LIMIT, or throttle --engine LIMIT")
    study_id = "" if engine_wide else args[0]
    try:
        limit = int(args[-1])
    except ValueError:
        limit = -1
    if limit < 0:
        raise ConfigError(f"LIMIT {args[-1]!r}: expected 0 (no limit) or more")
    if engine_wide:
        scope = "engine"
    elif scope != "global" and not scope.startswith(("adapter:", "group:")):
        raise ConfigError(f"--scope {scope!r}: expected global, adapter:<name> or group:<name>")
    opts = _conn_opts(kwargs)
    _run(for_study(opts, study_id) if study_id else opts, _control("throttle", lambda: SetThrottle(
        event_id=new_event_id(), study_id=study_ref(study_id), limit=limit, scope=scope)))


@click.command(name="stop-workers")
@click.option("--queues", default="", metavar="Q1,Q2", help="Only the workers serving these.")
@click.option("--name", "names", multiple=True, help="Only this worker (repeatable).")
@click.option("--study", "study_dir", type=click.Path(file_okay=False),
              help="Ask through this study of 'enginectl run' instead of a serve engine.")
@connection_options
def stop_workers(queues: str, names: tuple[str, ...], study_dir: str | None,
                 **kwargs: Any) -> None:
    """Stop workers (all, or those named or serving --queues): each finishes the tasks it
    runs, then exits (Merlin's stop-workers)."""
    opts = _conn_opts(kwargs)
    if study_dir:
        opts = for_study(opts, study_dir)
    request = StopWorkers(event_id=new_event_id(), names=names,
                          queues=tuple(q.strip() for q in queues.split(",") if q.strip()))
    _run(opts, _control("stop_workers", lambda: request))


@click.command()
@click.argument("study_id")
@connection_options
def events(study_id: str, **kwargs: Any) -> None:
    """Print a study's stored events as JSON lines, oldest first."""
    opts = for_study(_conn_opts(kwargs), study_id)

    async def body(bus: Bus) -> int:
        reply = await ask(bus, "events", EventsRequest(event_id=new_event_id(),
                                                        study_id=study_ref(study_id)))
        if not isinstance(reply, EventsReply) or not reply.ok:
            raise ConfigError(getattr(reply, "error", "") or "events failed")
        for raw in reply.events:
            click.echo(bytes(raw).decode())
        return 0

    _run(opts, body)


def client_commands() -> list[click.Command]:
    """Every client command, for ``engine.cli``."""
    from engine.dashcli import dashboard
    from engine.dbcli import db

    return [submit, status, list_, watch, cancel, restart, throttle, events, db, stop_workers,
            dashboard]

