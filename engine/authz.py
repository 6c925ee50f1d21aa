"""Who may do what on an engine's own NATS server: its users and their subject permissions.

An embedded server (``serve``'s and ``run``'s) has one user per role, each with a random
password, and the server itself enforces what each may publish and subscribe to:

* ``engine``: everything (it publishes the events, answers the API, owns the stream and
  the key-value buckets).
* ``client`` (``enginectl`` through ``client.json``): the API's request subjects
  (``troupe.v1.api.>``), its replies, and the events, read-only.
* ``monitor`` (a dashboard): the ``status`` and ``events`` requests and the events,
  read-only.
* ``worker`` (``enginectl worker``, through ``worker.json``): take tasks from the tasks
  stream (its consumers, its acknowledgements; ``engine.workqueue``), report exit
  statuses on the studies' report subjects, hear cancel requests; nothing else (no
  event, no API request, no other stream or bucket).
* ``job-<study>`` (scheduler jobs of one study, through ``TROUPE_NOTIFY_*``): publish
  its own study's report subject, nothing else; its password is derived from a secret of
  the engine and the study id, so a job submitted before an engine restart still reports.

Nobody but the engine can publish an event, purge the stream, or write or delete a
key-value bucket (JetStream's API, ``$JS.API.>``, and the buckets' ``$KV.>`` subjects are
the engine's alone), so the engine trusts the events on its subjects as its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping

import msgspec

from engine import subjects

__all__ = ["ROLES", "NatsUser", "authorization_block", "job_user", "new_secrets", "role_users"]

ROLES = ("engine", "client", "monitor", "worker")
"""The fixed users of an embedded server (plus one ``job-<study>`` user per study)."""

_EVENTS = f"{subjects.PREFIX}.events.>"
_TASKS = "TROUPE_TASKS"  # engine.workqueue.TASKS_STREAM (not imported: it imports nats-py)
_WORKER_PUBLISH = (
    "$JS.API.INFO", f"$JS.API.STREAM.INFO.{_TASKS}", f"$JS.API.STREAM.CREATE.{_TASKS}",
    f"$JS.API.CONSUMER.INFO.{_TASKS}.>", f"$JS.API.CONSUMER.CREATE.{_TASKS}.>",
    f"$JS.API.CONSUMER.DURABLE.CREATE.{_TASKS}.>", f"$JS.API.CONSUMER.MSG.NEXT.{_TASKS}.>",
    f"$JS.ACK.{_TASKS}.>", f"{subjects.PREFIX}.jobs.>", subjects.WORKERS_ALIVE,
)


class NatsUser(msgspec.Struct, frozen=True, kw_only=True):
    """One user of the server and what it may publish and subscribe to (NATS subjects,
    wildcards allowed; an empty tuple allows nothing)."""

    name: str
    password: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


def new_secrets() -> dict[str, str]:
    """Fresh random passwords for every role, and the secret job passwords derive from."""
    return {**{role: secrets.token_urlsafe(24) for role in ROLES},
            "jobs": secrets.token_urlsafe(32)}


def role_users(passwords: Mapping[str, str]) -> list[NatsUser]:
    """The engine, client and monitor users with ``passwords`` (by role)."""
    return [
        NatsUser(name="engine", password=passwords["engine"], publish=(">",),
                 subscribe=(">",)),
        NatsUser(name="client", password=passwords["client"],
                 publish=(subjects.api(">"),), subscribe=("_INBOX.>", _EVENTS)),
        NatsUser(name="monitor", password=passwords["monitor"],
                 publish=(subjects.api("status"), subjects.api("events")),
                 subscribe=("_INBOX.>", _EVENTS)),
        NatsUser(name="worker", password=passwords["worker"], publish=_WORKER_PUBLISH,
                 subscribe=("_INBOX.>", subjects.WORKER_CANCEL, subjects.WORKERS_STOP)),
    ]


def job_user(study_id: str, jobs_secret: str) -> NatsUser:
    """The user a study's scheduler jobs report their exit status as: it may publish to
    that study's report subject only."""
    password = hmac.new(jobs_secret.encode(), study_id.encode(), hashlib.sha256).hexdigest()
    name = "job-" + hashlib.sha256(study_id.encode()).hexdigest()[:16]
    return NatsUser(name=name, password=password, publish=(subjects.job_reports(study_id),))


def _allow(subjects_: tuple[str, ...]) -> str:
    if not subjects_:
        return '{deny: [">"]}'
    return "{allow: [" + ", ".join(json.dumps(s) for s in subjects_) + "]}"


def authorization_block(users: Iterable[NatsUser]) -> str:
    """The nats-server configuration block that declares ``users`` (JSON-quoted values,
    which the server's configuration syntax accepts)."""
    lines = [
        f"    {{user: {json.dumps(u.name)}, password: {json.dumps(u.password)}, "
        f"permissions: {{publish: {_allow(u.publish)}, subscribe: {_allow(u.subscribe)}}}}}"
        for u in users
    ]
    return "authorization {\n  users = [\n" + "\n".join(lines) + "\n  ]\n}\n"
