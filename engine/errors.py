"""The engine's exception tree.

Exceptions are for bugs, bad input and broken infrastructure; a step's failure is data
(a ``StepStateChanged`` event with a ``kind``), never an exception. Every class says when
it is raised and carries its data as attributes.
"""

from __future__ import annotations

__all__ = [
    "BusError",
    "ConfigError",
    "EngineError",
    "InvalidTransition",
    "SpecError",
    "StoreConflict",
    "StoreError",
    "printable",
]

_CONTROL = {c: repr(chr(c))[1:-1] for c in [*range(0x20), *range(0x7F, 0xA0)]}
_CONTROL |= {0x2028: "\\u2028", 0x2029: "\\u2029"}


def printable(text: str) -> str:
    """``text`` with every control character escaped as ``repr`` would (``\\n``, ``\\x00``),
    so that a name taken from a spec prints as one line and cannot forge another."""
    return text.translate(_CONTROL)


class EngineError(Exception):
    """Base of every exception the engine raises on purpose."""


class ConfigError(EngineError):
    """Raised when a command-line option or setting is invalid (e.g. ``--pargs`` without
    ``--pgen``). ``str()`` is the one-line message shown to the user."""


class SpecError(ConfigError):
    """Raised when a study spec cannot be loaded, validated or expanded.

    Attributes:
        file: The spec file as the user named it.
        field: The field path inside the spec, e.g. ``study[2].run.depends``; empty when
            the problem concerns the whole file (e.g. malformed YAML).
        message: What is wrong, without the file and field.

    Control characters in all three are escaped (:func:`printable`): the message is one
    line even when it quotes a hostile name.
    """

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file = str(file)
        self.field = printable(field)
        self.message = printable(message)
        prefix = f"{self.file}: {self.field}: " if field else f"{self.file}: "
        super().__init__(printable(prefix) + self.message)


class InvalidTransition(EngineError):
    """Raised by a pure ``decide`` function when an event is not valid in the current state.

    Attributes:
        step: The step (or actor) whose machine rejected the event.
        state: The state it was in.
        event: The event it received.
    """

    def __init__(self, step: str, state: object, event: object) -> None:
        self.step = step
        self.state = state
        self.event = event
        super().__init__(f"{step}: event {type(event).__name__} is invalid in state {state}")


class BusError(EngineError):
    """Raised when the NATS bus cannot be reached or an embedded server fails to start.

    Attributes:
        url: The server URL involved, if known.
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        self.url = url
        super().__init__(message)


class StoreError(EngineError):
    """Raised when the engine's durable state cannot be read or written.

    ``engine.store.Store`` (through ``engine.kvbucket.KeyValueBucket``, where nats-py's errors
    are translated) raises it when the bus is disconnected or reconnecting, a JetStream
    request timed out or was refused, or ``Store.finish_step`` found no stable revision to
    swap against. ``engine.actors.persist.Persister.wait_intent`` raises it when the
    persister gave up storing the entry that names the awaited attempt. A key that does
    not exist is not an error: reads return None.

    Attributes:
        bucket: The key-value bucket concerned ("" if none).
        key: The key concerned ("" if none).
    """

    def __init__(self, message: str, *, bucket: str = "", key: str = "") -> None:
        self.bucket = bucket
        self.key = key
        super().__init__(message)


class StoreConflict(StoreError):
    """Raised by a compare-and-swap write (``KeyValueBucket.create``/``update``) that lost:
    the key's latest revision is not ``last`` (someone wrote in between), or, for a
    create (``last`` None), the key already has a value. Nothing was written.

    Attributes:
        last: The revision the write expected (None for a create).
    """

    def __init__(self, message: str, *, bucket: str, key: str, last: int | None) -> None:
        self.last = last
        super().__init__(message, bucket=bucket, key=key)
