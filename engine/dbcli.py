"""``enginectl db``: the entity database of a ``serve`` engine (``engine.dbapi``).

    enginectl db get study|run|step|worker REF [--json]
    enginectl db list study|run|step|worker [--study S] [--state S] [--worker W]
                                            [--since WHEN] [--json]
    enginectl db delete study|run|worker [REF] [--all] [--study S] [--state S] [--force]
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import click

from engine.dbapi import KINDS
from engine.errors import ConfigError, printable
from engine.messages import DbReply, DbRequest, new_event_id

__all__ = ["db"]

# What a table shows of each kind (--json shows everything).
_COLUMNS = {
    "study": ["study_id", "name", "state", "created", "ended", "study_dir"],
    "run": ["run_id", "study_id", "state", "started", "ended", "worker", "workspace"],
    "step": ["step", "state", "attempt", "exit_code", "job_id", "reason"],
    "worker": ["worker", "host", "pid", "started", "heartbeat"],
}
_TIMES = {"created", "ended", "started", "heartbeat"}


def _since(text: str | None) -> float | None:
    """``--since``: an ISO date/time, or an age such as ``30m``, ``2h``, ``7d``."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(f"--since {text!r}: expected an ISO date/time or an age like "
                          "30m, 2h, 7d") from None


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "--"
    if key in _TIMES and isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return printable(str(value))[:60]


def _ask_db(kwargs: dict[str, Any], req: DbRequest, show: Any) -> None:
    from engine.client import ask, _conn_opts, _run

    opts = _conn_opts(kwargs)

    async def body(bus: Any) -> int:
        reply = await ask(bus, "db", req)
        if not isinstance(reply, DbReply) or not reply.ok:
            raise ConfigError(getattr(reply, "error", "") or "db request failed")
        show(reply)
        return 0

    _run(opts, body)


def _printer(kind: str, as_json: bool) -> Any:
    from engine.client import _table

    def show(reply: DbReply) -> None:
        if as_json:
            click.echo(json.dumps(list(reply.entries)))
            return
        cols = _COLUMNS[kind]
        click.echo(_table([[_cell(c, e.get(c)) for c in cols] for e in reply.entries],
                          [c.upper() for c in cols]))
        click.echo(f"{len(reply.entries)} {kind}(s)", err=True)

    return show


def _kind_arg(kinds: tuple[str, ...] = KINDS) -> Any:
    return click.argument("kind", type=click.Choice(kinds))


@click.group()
def db() -> None:
    """The entity database of a running engine: studies, runs, steps, workers."""


def _connection(func: Any) -> Any:
    from engine.client import connection_options

    return connection_options(func)


@db.command()
@_kind_arg()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_connection
def get(kind: str, ref: str, as_json: bool, **kwargs: Any) -> None:
    """One entity: a study (id, prefix, name or directory), a run (id or workspace), a
    step (STUDY:STEP) or a worker (id)."""
    from engine.client import study_ref

    _ask_db(kwargs, DbRequest(event_id=new_event_id(), op="get", kind=kind,
                              ref=study_ref(ref) if kind != "step" else ref),
            _printer(kind, as_json))


@db.command(name="list")
@_kind_arg()
@click.option("--study", default="", help="Only those of this study (needed for steps).")
@click.option("--state", default="", help="Only those in this state.")
@click.option("--worker", default="", help="Runs: only those of this engine.")
@click.option("--since", default=None, help="Only those since: an ISO time or an age (2h, 7d).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_connection
def list_(kind: str, study: str, state: str, worker: str, since: str | None, as_json: bool,
          **kwargs: Any) -> None:
    """Entities of one kind, filtered."""
    from engine.client import study_ref

    _ask_db(kwargs, DbRequest(event_id=new_event_id(), op="list", kind=kind,
                              study=study_ref(study), state=state, worker=worker,
                              since=_since(since)),
            _printer(kind, as_json))


@db.command()
@_kind_arg(("study", "run", "worker"))
@click.argument("ref", required=False, default="")
@click.option("--all", "all_", is_flag=True, help="Every one that matches the filters.")
@click.option("--study", default="", help="Runs: only those of this study.")
@click.option("--state", default="", help="Only those in this state.")
@click.option("--force", is_flag=True, help="Also a running study (it is cancelled first).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_connection
def delete(kind: str, ref: str, all_: bool, study: str, state: str, force: bool,
           as_json: bool, **kwargs: Any) -> None:
    """Delete entities; a study with its runs and steps (a running one only with --force)."""
    from engine.client import study_ref

    if bool(ref) == all_:
        raise ConfigError(f"delete {kind}: give one REF or --all")

    def show(reply: DbReply) -> None:
        if as_json:
            click.echo(json.dumps({"deleted": reply.deleted}))
        else:
            click.echo(f"deleted {reply.deleted} {kind}(s)")

    _ask_db(kwargs, DbRequest(event_id=new_event_id(), op="delete", kind=kind,
                              ref=study_ref(ref) if kind == "study" else ref, all=all_,
                              study=study_ref(study), state=state, force=force), show)
