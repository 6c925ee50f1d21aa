"""Partial matchers of messages, for tests: ``PublishState.match(state=WAITING) == cmd``
holds for any ``PublishState`` in WAITING, whatever its other fields (after dask's
``Instruction.match``). ``Event.match`` and ``Command.match`` make them."""

from __future__ import annotations

__all__ = ["Matchable", "Matcher"]


class Matcher:
    """Equal to any message of one type whose named fields have the given values (made by
    ``Event.match``/``Command.match``, after dask's ``Instruction.match``)."""

    __slots__ = ("fields", "type")

    def __init__(self, typ: type, fields: dict[str, object]) -> None:
        unknown = set(fields) - set(typ.__struct_fields__)  # type: ignore[attr-defined]
        if unknown:
            raise TypeError(f"{typ.__name__} has no field {sorted(unknown)}")
        self.type, self.fields = typ, fields

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.type) and all(
            getattr(other, k) == v for k, v in self.fields.items())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.type.__name__}.match({args})"


class Matchable:
    """Mixin of the machines' events and commands: ``X.match(**fields)``."""

    @classmethod
    def match(cls, **fields: object) -> Matcher:
        """A partial matcher for tests: ``PublishState.match(state=WAITING) == cmd``
        (TypeError for a field the message does not have)."""
        return Matcher(cls, fields)
