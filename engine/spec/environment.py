"""Maestro's ``$(NAME)`` token substitution, quirks included.

Maestro replaces tokens with plain ``str.replace`` in one pass: first every *label*, then every
*dependency*, then every *substitution*, each group in insertion order, with no recursion.
Which group a variable lands in is decided when it is added: a string value containing ``$``
becomes a label once any plain substitution exists; everything else is a substitution. So
``A: alpha``, ``B: $(A)-beta``, ``C: $(B)-gamma`` turns ``$(C)`` into ``$(B)-gamma`` (B is
a label replaced before C is). ``OUTPUT_PATH`` is removed and re-added as the study directory,
then ``SPECROOT`` is added, so both are substituted last. Unknown tokens stay verbatim, for the
shell; :func:`unresolved_tokens` finds them so the caller can warn.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.spec.model import Spec

__all__ = [
    "EnvItem",
    "StudyEnvironment",
    "build_environment",
    "dependency_path",
    "unresolved_tokens",
]

_TOKEN = re.compile(r"\$\(([A-Za-z_][\w.\-]*)\)")
_LEFT_FOR_ADAPTERS = frozenset({"LAUNCHER"})


class EnvItem:
    """What :meth:`StudyEnvironment.find` returns: Maestro's ``Variable``-like ``.name``/``.value``.

    Custom parameter generators call ``env.find("SMIN").value``; ``value`` is the value as
    written in the spec (an ``int`` stays an ``int``), or the path for a dependency.
    """

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"EnvItem({self.name!r}, {self.value!r})"


class StudyEnvironment:
    """The study's tokens, kept in Maestro's three ordered groups.

    Invariant: a name is in at most one of ``labels``, ``dependencies`` and ``substitutions``.
    """

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}
        self.dependencies: dict[str, str] = {}
        self.substitutions: dict[str, str] = {}
        self._raw: dict[str, Any] = {}
        # Maestro remembers that a substitution was added even after it is removed again
        # (its token set is never pruned); that is what makes later '$' values labels.
        self._had_substitution = False

    def add_variable(self, name: str, value: Any) -> None:
        """Add a variable or label, sorting it into a group the way Maestro does."""
        self._raw[name] = value
        if isinstance(value, str) and "$" in value and self._had_substitution:
            self.labels[name] = value
        else:
            self.substitutions[name] = str(value)
            self._had_substitution = True

    def add_dependency(self, name: str, replacement: str) -> None:
        """Add a dependency token; ``$(name)`` becomes ``replacement``."""
        self._raw[name] = replacement
        self.dependencies[name] = replacement

    def remove(self, name: str) -> Any:
        """Remove a name from whichever group holds it; return its raw value (None if absent)."""
        for group in (self.dependencies, self.substitutions, self.labels):
            group.pop(name, None)
        return self._raw.pop(name, None)

    def find(self, name: str) -> EnvItem | None:
        """Look a name up (Maestro's ``StudyEnvironment.find``), for parameter generators."""
        return EnvItem(name, self._raw[name]) if name in self._raw else None

    def apply(self, text: str) -> str:
        """Substitute every known token in ``text``: labels, then dependencies, then the rest."""
        if not text or "$(" not in text:
            return text
        for group in (self.labels, self.dependencies, self.substitutions):
            for name, value in group.items():
                text = text.replace(f"$({name})", value)
        return text

    def substitute_only(self, text: str) -> str:
        """Apply only the plain substitutions (how Maestro resolves a git dependency's path)."""
        for name, value in self.substitutions.items():
            text = text.replace(f"$({name})", value)
        return text


def build_environment(
    spec: Spec, *, study_dir: str, spec_root: str, cwd: str
) -> StudyEnvironment:
    """Build the study environment in Maestro's order.

    Variables, then labels, are added in file order; ``OUTPUT_PATH`` is then replaced by the
    study directory and ``SPECROOT`` added; dependencies come last, their paths resolved with
    the plain substitutions and made absolute against ``cwd``.

    Args:
        spec: The validated spec.
        study_dir: The absolute study directory (the new ``$(OUTPUT_PATH)``).
        spec_root: The absolute directory of the spec (``$(SPECROOT)``).
        cwd: The directory relative dependency paths are resolved against.

    Returns:
        The environment, ready to :meth:`~StudyEnvironment.apply`.
    """
    env = StudyEnvironment()
    for name, value in spec.env.variables.items():
        env.add_variable(name, value)
    for name, value in spec.env.labels.items():
        env.add_variable(name, value)
    env.remove("OUTPUT_PATH")
    env.add_variable("OUTPUT_PATH", study_dir)
    env.add_variable("SPECROOT", spec_root)
    for dep in spec.env.dependencies.paths:
        env.add_dependency(dep.name, dependency_path(env, dep.path, cwd))
    for git in spec.env.dependencies.git:
        env.add_dependency(git.name, os.path.join(dependency_path(env, git.path, cwd), git.name))
    return env


def dependency_path(env: StudyEnvironment, path: str, cwd: str) -> str:
    """Resolve a dependency's ``path`` field: plain substitutions, then absolute against cwd."""
    return os.path.normpath(os.path.join(cwd, env.substitute_only(path)))


def unresolved_tokens(text: str) -> list[str]:
    """Return the ``$(NAME)`` tokens left in ``text``, in order, without duplicates.

    ``$(LAUNCHER)`` (and its bracketed forms) is not reported: scheduler adapters expand it;
    nor is ``$(race.<group>)``, which the runtime replaces with a race winner's workspace.
    Shell forms that are not names, such as ``$(date +%s)`` or ``$((1+2))``, are ignored.
    """
    out: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        name = match.group(1)
        if name.startswith("race."):
            continue  # $(race.<group>): the winner's workspace, known only at run time
        if name not in _LEFT_FOR_ADAPTERS and token not in out:
            out.append(token)
    return out
