"""Every NATS subject the engine uses, built in one place.

Subjects are versioned under ``troupe.v1``. Events of a study live under
``troupe.v1.events.<study>.``; one JetStream stream (``EVENTS_STREAM``) captures
``troupe.v1.events.>`` so a monitor that connects late can replay a study.

Step names may contain ``.``, ``*``, ``>``, spaces or any other character, so a step name
is encoded into one safe token: ASCII letters, digits, ``_`` and ``-`` stay as they are;
every other byte of the name's UTF-8 encoding becomes ``~`` followed by two lowercase hex
digits (``say_hi_NAME.Pam`` -> ``say_hi_NAME~2ePam``). The encoding is reversible
(``decode_token``) and never yields an empty token (the empty name is ``~``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

__all__ = [
    "EVENTS_STREAM",
    "PREFIX",
    "all_events",
    "api",
    "control",
    "decode_token",
    "encode_token",
    "job_reports",
    "kv_key",
    "step_endings",
    "step_event",
    "step_events",
    "study_event",
    "study_events",
]

PREFIX = "troupe.v1"
EVENTS_STREAM = "TROUPE_EVENTS"

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_HEX = re.compile(r"[0-9a-f]{2}")


@functools.lru_cache(maxsize=4096)  # the study id and the steps of the moment: 4 events each
def encode_token(name: str) -> str:
    """Encode any string as one NATS subject token (see the module docstring)."""
    if not name:
        return "~"
    if name.isascii() and all(b in _SAFE for b in name.encode()):
        return name
    return "".join(chr(b) if b in _SAFE else f"~{b:02x}" for b in name.encode())


def decode_token(token: str) -> str:
    """Invert ``encode_token``.

    Raises:
        ValueError: ``token`` is not the output of ``encode_token``.
    """
    if token == "~":
        return ""
    out = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "~":
            hexpair = token[i + 1 : i + 3]
            if not _HEX.fullmatch(hexpair):
                raise ValueError(f"not an encoded token: {token!r}")
            out.append(int(hexpair, 16))
            i += 3
        elif ch.isascii() and ord(ch) in _SAFE:
            out.append(ord(ch))
            i += 1
        else:
            raise ValueError(f"not an encoded token: {token!r}")
    try:
        return out.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"not an encoded token: {token!r}") from exc


def all_events() -> str:
    """Wildcard for every event of every study (the stream's subject)."""
    return f"{PREFIX}.events.>"


def study_events(study_id: str) -> str:
    """Wildcard for every event of one study, steps and study alike."""
    return f"{PREFIX}.events.{encode_token(study_id)}.>"


def step_events(study_id: str) -> str:
    """Wildcard for every step event of one study."""
    return f"{PREFIX}.events.{encode_token(study_id)}.step.>"


def step_endings(study_id: str, states: Iterable[str]) -> list[str]:
    """One wildcard per state in ``states``: every step's events entering that state
    (``...step.*.<state>``). The runtime listens to the terminal states only."""
    study = encode_token(study_id)
    return [f"{PREFIX}.events.{study}.step.*.{state.lower()}" for state in sorted(states)]


def step_event(study_id: str, step: str, state: str) -> str:
    """Subject of one step's state change: ``...step.<token>.<state lowercase>``.

    A dependency's completion subject is ``step_event(study, dep, "finished")``.
    """
    return f"{PREFIX}.events.{encode_token(study_id)}.step.{encode_token(step)}.{state.lower()}"


def step_warning(study_id: str, step: str) -> str:
    """Subject of a warning about a step (``...step.<token>.warning``; not a state)."""
    return f"{PREFIX}.events.{encode_token(study_id)}.step.{encode_token(step)}.warning"


def samples_event(study_id: str, step: str, state: str) -> str:
    """Subject of a batch of a sampled step's samples entering a state
    (``...samples.<token>.<state lowercase>``)."""
    return f"{PREFIX}.events.{encode_token(study_id)}.samples.{encode_token(step)}.{state.lower()}"


def study_event(study_id: str, kind: str) -> str:
    """Subject of a study-level event (``started``, ``ended``)."""
    return f"{PREFIX}.events.{encode_token(study_id)}.study.{kind}"


def control(study_id: str, verb: str) -> str:
    """Request/reply subject of a study's control verb (``cancel``, ``throttle``)."""
    return f"{PREFIX}.control.{encode_token(study_id)}.{verb}"


def api(verb: str) -> str:
    """Request/reply subject of the engine service's API (``submit``, ``status``,
    ``cancel``, ``restart``, ``throttle``)."""
    return f"{PREFIX}.api.{verb}"


def kv_key(name: str) -> str:
    """Encode a name for a JetStream KV key (``[-/_=.A-Za-z0-9]``): ``encode_token`` with
    ``=`` as the escape character instead of ``~``."""
    return encode_token(name).replace("~", "=")


def tasks(queue: str) -> str:
    """Where a queue's step tasks wait for workers (``engine.workqueue``); ``>``: all."""
    return f"{PREFIX}.tasks.{queue if queue == '>' else encode_token(queue)}"


WORKER_CANCEL = f"{PREFIX}.workers.cancel"
"""Where the engine asks the workers to stop an attempt (by its key)."""

WORKERS_STOP = f"{PREFIX}.workers.stop"
"""Where the engine tells workers to stop (``enginectl stop-workers``)."""

WORKERS_ALIVE = f"{PREFIX}.workers.alive"
"""Where every worker says, each heartbeat, who it is and what it serves and runs."""


def job_reports(study_id: str) -> str:
    """Where a study's scheduler jobs report their exit status (``engine.notify``)."""
    return f"{PREFIX}.jobs.{encode_token(study_id)}"
