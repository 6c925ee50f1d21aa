"""``enginectl graph``: a study's picture without a browser.

    enginectl graph SPEC|STUDY [--format dot|svg|png|mermaid] [--instances] [-o FILE]

SPEC is expanded as ``validate`` expands it; STUDY is a study directory of ``run`` or
``serve``, whose ``status.csv`` then colours the nodes by state. DOT and Mermaid are
written by ``engine.dagformat``; SVG and PNG by Graphviz's ``dot``, run here, which this
command needs only for those two formats.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import structlog

from engine.dag import StepDag, load_dag
from engine.dagformat import instance_states, to_dot, to_mermaid
from engine.errors import ConfigError, printable

__all__ = ["graph", "render_graph"]

log = structlog.get_logger(__name__)

FORMATS = ("dot", "svg", "png", "mermaid")
_DOT_TIMEOUT = 300.0  # a 10,000-node picture takes dot a while; a hung dot does not


def _states(target: str, dag: StepDag) -> dict[str, dict[str, int]] | None:
    """The states in a study directory's ``status.csv`` (None for a spec, or a study
    whose table is not written yet)."""
    from engine.status import read_status

    if not os.path.isdir(target):
        return None
    try:
        rows = read_status(Path(target) / "status.csv")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{target}: cannot read status.csv ({exc})") from exc
    return instance_states(dag, rows)


def render_graph(dag: StepDag, fmt: str, *, instances: bool = False,
                 states: dict[str, dict[str, int]] | None = None) -> bytes:
    """The picture of ``dag`` in ``fmt`` (one of ``FORMATS``).

    Raises:
        ConfigError: ``fmt`` is svg or png and Graphviz's ``dot`` is not installed, fails
            or takes over five minutes (the message is ``dot``'s last line).
    """
    if fmt == "mermaid":
        return to_mermaid(dag, instances=instances, states=states).encode()
    text = to_dot(dag, instances=instances, states=states)
    if fmt == "dot":
        return text.encode()
    dot = shutil.which("dot")
    if dot is None:
        raise ConfigError(f"--format {fmt} needs Graphviz's dot (apt-get install graphviz); "
                          "use --format dot or mermaid")
    try:
        done = subprocess.run([dot, f"-T{fmt}"], input=text.encode(), capture_output=True,
                              timeout=_DOT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"dot took over {_DOT_TIMEOUT:g} s; try without --instances, "
                          "or --format dot") from exc
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise ConfigError(f"dot failed: {lines[-1] if lines else f'exit code {done.returncode}'}")
    return done.stdout


@click.command(name="graph")
@click.argument("target", metavar="SPEC|STUDY", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="dot", show_default=True,
              help="dot and mermaid are text; svg and png need Graphviz's dot.")
@click.option("--instances", is_flag=True,
              help="One node per step instance (else one per spec step, with its count).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the picture here (default: standard output).")
@click.option("--pgen", "-p", type=click.Path(exists=True, dir_okay=False),
              help="A Maestro custom parameter generator (Python file), for a SPEC.")
@click.option("--pargs", multiple=True, metavar="KEY:VALUE",
              help="Argument for the parameter generator (repeatable).")
def graph(target: str, fmt: str, instances: bool, output: str | None, pgen: str | None,
          pargs: tuple[str, ...]) -> None:
    """Draw SPEC's steps and dependencies, or a STUDY directory's with each step's state
    (from its status.csv): DOT (default), SVG, PNG or Mermaid."""
    if not os.path.exists(target):
        raise ConfigError(f"{target}: no such spec file or study directory")
    dag = load_dag(target, pgen=pgen, pargs=pargs)
    states = _states(target, dag)
    data = render_graph(dag, fmt, instances=instances, states=states)
    if output:
        Path(output).write_bytes(data)
        click.echo(f"wrote {printable(output)} ({fmt}, {len(dag.nodes)} steps)", err=True)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    log.info("graph_written", format=fmt, steps=len(dag.nodes), instances=instances,
             states=states is not None, output=output or "-")
