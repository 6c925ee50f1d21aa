"""A client that connects while the engine's embedded nats-server reloads its users (a
study's job user is added at each study's start, with a SIGHUP) is not refused: nats-server
refuses some connections made at that moment, and ``open_bus`` tries such a refusal once
more. Against a real nats-server."""

from __future__ import annotations

from pathlib import Path

from engine.authz import job_user, role_users
from engine.bus import Credentials, open_bus
from engine.errors import BusError
from engine.natsserver import open_embedded_server, reload_users


async def test_clients_connecting_during_user_reloads_are_not_refused(tmp_path: Path) -> None:
    secrets = {role: role[0] * 24 for role in ("engine", "client", "monitor", "worker", "jobs")}
    users = role_users(secrets)
    refused = []
    async with open_embedded_server(tmp_path / "nats", users=users) as server:
        for i in range(60):
            reload_users(server, [*users, job_user(f"study{i}", secrets["jobs"])])
            try:
                async with open_bus(server.url, Credentials(user="client",
                                                            password=secrets["client"])):
                    pass
            except BusError as exc:
                refused.append(str(exc))
        # Wrong credentials are still refused, with the one-line error.
        wrong = ""
        try:
            async with open_bus(server.url, Credentials(user="client", password="x" * 24)):
                pass
        except BusError as exc:
            wrong = str(exc)
    assert [] == refused
    assert "Authorization Violation" in wrong
