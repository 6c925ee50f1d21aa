"""A NATS cluster for Troupe as a service: each node's configuration and each role's
credentials, written by a one-shot init step (``python -m engine.clusterconf OUT``; the
``init`` service of ``docker/compose.yaml``), never baked into an image.

The cluster's users are the embedded server's roles (``engine.authz``: ``engine``,
``client``, ``monitor``, ``worker``), with the same subject permissions, and the routes
between the nodes authenticate with a password of their own. ``OUT`` gets one directory
per consumer, so that each container mounts only what it needs::

    OUT/nats/secrets.json     every password (0600): the source, reused by the next run
    OUT/nats/<node>.conf      a node's configuration: ports, routes, JetStream, users (0600)
    OUT/nats/<node>.monitor   the node's monitoring URL (its health check reads /healthz)
    OUT/nats/urls             the client URLs, comma-separated
    OUT/<role>/password       the role's password (0600), for --password-file
    OUT/client/client.json    URL, user and password: enginectl --state-dir OUT/client
    OUT/monitor/monitor.json  the same for the monitor user
    OUT/worker/worker.json    the same for the worker user: enginectl worker --state-dir OUT/worker

Running it again keeps the passwords (``--rotate`` makes new ones), so a restarted init
step never locks out running engines and workers. Per-study job users are not made:
against an operator's server, scheduler jobs get no NATS credentials and their exit
files are read instead (docs/security.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from engine.authz import ROLES, authorization_block, new_secrets, role_users

__all__ = ["DEFAULT_NODES", "Node", "node_config", "parse_nodes", "write_cluster"]

DEFAULT_NODES = ("n1@127.0.0.1:4222:6222:8222,n2@127.0.0.1:4223:6223:8223,"
                 "n3@127.0.0.1:4224:6224:8224")
"""Three nodes on one host's loopback ports (containers on the host's network)."""

CLUSTER_NAME = "troupe"
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]")
ROUTE_USER = "route"


class Node(msgspec.Struct, frozen=True, kw_only=True):
    """One nats-server of the cluster: its name, the address the others and the clients
    reach it at, and its client, route and monitoring ports."""

    name: str
    host: str
    client_port: int
    route_port: int
    monitor_port: int

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"


def parse_nodes(text: str) -> list[Node]:
    """Nodes from ``NAME@HOST:CLIENT:ROUTE:MONITOR`` entries, comma-separated.

    Raises:
        ValueError: an entry is malformed, or two nodes share a name.
    """
    nodes = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, rest = entry.partition("@")
        parts = rest.rsplit(":", 3)
        if not sep or len(parts) != 4 or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"node {entry!r}: expected NAME@HOST:CLIENT:ROUTE:MONITOR")
        if not _HOST.fullmatch(parts[0]):
            raise ValueError(f"node {entry!r}: the host must be a name or an address")
        try:
            ports = [int(p) for p in parts[1:]]
        except ValueError:
            raise ValueError(f"node {entry!r}: the ports must be numbers") from None
        if not all(0 < p < 65536 for p in ports):
            raise ValueError(f"node {entry!r}: a port out of range")
        nodes.append(Node(name=name, host=parts[0], client_port=ports[0], route_port=ports[1],
                          monitor_port=ports[2]))
    if len({n.name for n in nodes}) != len(nodes):
        raise ValueError("two nodes have the same name")
    if not nodes:
        raise ValueError("no node given")
    return nodes


def node_config(node: Node, nodes: Sequence[Node], passwords: dict[str, str], *,
                listen: str = "", store_dir: str) -> str:
    """The nats-server configuration of ``node``: JetStream in ``store_dir``, routes to
    every node of ``nodes`` (authenticated), and the users of every role.

    The node's route and monitoring ports bind the node's own address (where the other
    nodes reach it); its client port binds ``listen`` if given (``0.0.0.0``: clients on
    other hosts), else that address too.
    """
    route_pw = passwords[ROUTE_USER]
    routes = ", ".join(json.dumps(f"nats-route://{ROUTE_USER}:{route_pw}@{n.host}:{n.route_port}")
                       for n in nodes if n.name != node.name)
    return (
        f"server_name: {json.dumps(node.name)}\n"
        f"listen: {json.dumps(f'{listen or node.host}:{node.client_port}')}\n"
        f"http: {json.dumps(f'{node.host}:{node.monitor_port}')}\n"
        "max_payload: 8MB\n"
        f"jetstream {{\n  store_dir: {json.dumps(store_dir)}\n}}\n"
        "cluster {\n"
        f"  name: {CLUSTER_NAME}\n"
        f"  listen: {json.dumps(f'{node.host}:{node.route_port}')}\n"
        # Advertised URLs stay on (no no_advertise): the engine counts them to size the
        # cluster, and so its replicas (engine.bus.Bus.cluster_size).
        f"  authorization {{ user: {ROUTE_USER}, password: {json.dumps(route_pw)} }}\n"
        f"  routes: [{routes}]\n"
        "}\n"
        + authorization_block(role_users(passwords))
    )


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` with ``mode``, atomically, never through a planted link."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _load_or_make(path: Path, rotate: bool) -> dict[str, str]:
    """The passwords in ``path`` if it holds every one, else (or with ``rotate``) new ones."""
    if not rotate:
        try:
            known = json.loads(path.read_text())
            if isinstance(known, dict) and all(isinstance(known.get(k), str) and known[k]
                                               for k in (*ROLES, ROUTE_USER)):
                return {k: known[k] for k in (*ROLES, ROUTE_USER)}
        except (OSError, ValueError):
            pass
    made = {role: pw for role, pw in new_secrets().items() if role in ROLES}
    made[ROUTE_USER] = secrets.token_urlsafe(24)
    return made


def write_cluster(out: Path, nodes: Sequence[Node], *, listen: str = "",
                  store_dir: str = "/data/jetstream", rotate: bool = False) -> str:
    """Write every node's configuration and every role's credentials under ``out`` (the
    layout is in this module's docstring).

    Returns:
        The client URLs, comma-separated.

    Raises:
        OSError: a file cannot be written.
    """
    dirs = {d: out / d for d in ("nats", *ROLES)}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    passwords = _load_or_make(dirs["nats"] / "secrets.json", rotate)
    _write(dirs["nats"] / "secrets.json", json.dumps(passwords, indent=1) + "\n")
    urls = ",".join(n.url for n in nodes)
    for node in nodes:
        _write(dirs["nats"] / f"{node.name}.conf",
               node_config(node, nodes, passwords, listen=listen, store_dir=store_dir))
        _write(dirs["nats"] / f"{node.name}.monitor",
               f"http://{node.host}:{node.monitor_port}\n", 0o644)
    _write(dirs["nats"] / "urls", urls + "\n", 0o644)
    for role in ROLES:
        _write(dirs[role] / "password", passwords[role] + "\n")
        if role != "engine":  # the engine takes --password-file; the others a config
            _write(dirs[role] / f"{role}.json",
                   json.dumps({"url": urls, "user": role, "password": passwords[role]}) + "\n")
    return urls


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.clusterconf OUT [--nodes ...] [--listen ADDR] [--rotate]``."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.clusterconf",
        description="Write a Troupe NATS cluster's node configurations and credentials.")
    parser.add_argument("out", type=Path, help="the directory to write (see the module doc)")
    parser.add_argument("--nodes", default=os.environ.get("TROUPE_NATS_NODES") or DEFAULT_NODES,
                        help="NAME@HOST:CLIENT:ROUTE:MONITOR, comma-separated "
                             "(default: $TROUPE_NATS_NODES, else %(default)s)")
    parser.add_argument("--listen", default=os.environ.get("TROUPE_NATS_LISTEN", ""),
                        help="the address the client ports bind, e.g. 0.0.0.0 for clients "
                             "and workers on other hosts (default: $TROUPE_NATS_LISTEN, "
                             "else each node's own address)")
    parser.add_argument("--store-dir", default="/data/jetstream",
                        help="each node's JetStream store, in its own container "
                             "(default %(default)s)")
    parser.add_argument("--rotate", action="store_true",
                        help="new passwords (running engines and workers must restart)")
    args = parser.parse_args(argv)
    try:
        nodes = parse_nodes(args.nodes)
        urls = write_cluster(args.out, nodes, listen=args.listen, store_dir=args.store_dir,
                             rotate=args.rotate)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"clusterconf: {len(nodes)} nodes ({urls}); credentials in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
