"""Names on disk: Maestro's path sanitiser, the study directory and the step workspace rules.

Maestro builds every directory name (study, step, combination) through one sanitiser that keeps
``[A-Za-z0-9-_.() ]`` and turns spaces into underscores; the instance *names* keep their raw
characters. This module reproduces that sanitiser and the study-directory rule (``-o DIR`` as
given, else ``<OUTPUT_PATH>/<name>_<timestamp>``), and holds the names a step directory may not
take because the study directory already uses them.
"""

from __future__ import annotations

import datetime
import os
import string
from typing import TYPE_CHECKING

from engine.errors import ConfigError, printable

if TYPE_CHECKING:
    from engine.spec.model import Spec

__all__ = [
    "RESERVED_DIRS",
    "SAFE_CHARS",
    "UnsafePath",
    "contained_path",
    "make_safe_path",
    "study_dir_for",
    "unsafe_dir_reason",
]

#: Characters Maestro keeps in a path component (``maestrowf.utils.make_safe_path``).
SAFE_CHARS = frozenset("-_.() " + string.ascii_letters + string.digits)

#: Top-level entries of the study directory that a step workspace must not take over.
RESERVED_DIRS = frozenset({"meta", "logs"})

_TIMESTAMP = "%Y%m%d-%H%M%S"


def make_safe_path(s: str) -> str:
    """Sanitise one path component the way Maestro does.

    Every character outside ``[A-Za-z0-9-_.() ]`` is dropped, then spaces become ``_``:
    ``"FAREWELL.So long"`` gives ``"FAREWELL.So_long"`` and ``"P.a/b"`` gives ``"P.ab"``.
    The result is idempotent and never contains a path separator, but it may be empty or
    ``"."``/``".."``; callers that build directories must check for that
    (:func:`unsafe_dir_reason`).

    Args:
        s: The raw component (a step name, a combination string, a study name).

    Returns:
        The sanitised component.
    """
    return "".join(c for c in s if c in SAFE_CHARS).replace(" ", "_")


class UnsafePath(ConfigError):
    """Raised by :func:`contained_path` when a name from a spec cannot be a path component
    (empty, ``.`` or ``..`` once sanitised) or the path would leave its root.

    Attributes:
        root: The directory the path must stay in.
        component: The offending component, as given.
        reason: Why it was refused.
    """

    def __init__(self, root: str, component: str, reason: str) -> None:
        self.root = root
        self.component = component
        self.reason = reason
        super().__init__(f"path component {printable(component)!r} under {root} {reason}")


def contained_path(root: str | os.PathLike[str], *parts: str, keep_spaces: bool = False) -> str:
    """Join names from a spec under ``root``, each sanitised, and check the result stays there.

    This is the one way a path is built from spec content (study, step, combination, log and
    script names). Each part goes through :func:`make_safe_path` (Maestro's rule, so names
    Maestro accepts give Maestro's paths), must not then be empty, ``.`` or ``..``, and the
    joined, normalised path must lie strictly inside ``root``.

    Args:
        root: The directory the path must stay inside (the study directory, a workspace).
        parts: Path components, one name each (a ``/`` in a name is dropped, not followed).
        keep_spaces: Keep spaces instead of turning them into ``_``, for the files Maestro
            names after the raw study name (``logs/<name>.log``).

    Returns:
        The joined path.

    Raises:
        UnsafePath: A part is empty or a dot name once sanitised, or the path escapes.
    """
    base = os.path.normpath(os.fspath(root))
    safe: list[str] = []
    for part in parts:
        name = "".join(c for c in part if c in SAFE_CHARS)
        name = name if keep_spaces else name.replace(" ", "_")
        if name in ("", ".", ".."):
            raise UnsafePath(base, part, "is empty or a dot name once sanitised")
        safe.append(name)
    path = os.path.join(base, *safe)
    # (Names hold no separator and are not dot names, so this holds by construction; it is
    # checked anyway, by prefix: a commonpath per step and sample costs more than it says.)
    prefix = base if base.endswith(os.sep) else base + os.sep
    if not path.startswith(prefix) or path == base:
        raise UnsafePath(base, "/".join(parts), "would leave the directory")
    return path


def unsafe_dir_reason(component: str, *, top_level: bool) -> str | None:
    """Say why a sanitised component cannot be a workspace directory, or return None.

    Args:
        component: A component already passed through :func:`make_safe_path`.
        top_level: True for a step directory (directly under the study directory), where
            the study's own ``meta``/``logs`` directories are off limits too.

    Returns:
        A short reason ("is empty after sanitising", ...) or None when the name is usable.
    """
    if component in ("", "."):
        return "is empty after sanitising, so the workspace would be its parent directory"
    if component == "..":
        return "would put the workspace outside its parent directory"
    if top_level and component in RESERVED_DIRS:
        return f"would put the workspace onto the study's own '{component}' directory"
    return None


def study_dir_for(
    spec: Spec, *, out_dir: str | None, now: datetime.datetime, cwd: str
) -> str:
    """Compute the absolute study directory, exactly as ``maestro run`` does.

    * ``-o DIR`` wins and is used as given (made absolute against ``cwd``), no timestamp.
    * Otherwise ``<abspath(OUTPUT_PATH)>/<safe(name with ' '->'_')>_<%Y%m%d-%H%M%S>``, where
      a relative OUTPUT_PATH is resolved against ``cwd`` (not the spec directory) and tokens
      inside it are *not* expanded (Maestro removes the variable before substitution).
    * Without OUTPUT_PATH, ``cwd`` is the parent.
    * A timestamped directory that already exists (two studies of one spec started in
      the same second) gets ``-2``, ``-3``, ... (Maestro would reuse it).

    Args:
        spec: The validated spec.
        out_dir: The ``-o`` option, or None.
        now: The launch time used for the timestamp.
        cwd: The directory relative paths are resolved against.

    Returns:
        The absolute, normalised study directory.
    """
    if out_dir:  # Maestro tests ``if args.out``: an empty -o falls back to OUTPUT_PATH
        return os.path.normpath(os.path.join(cwd, os.fspath(out_dir)))
    raw = spec.env.variables.get("OUTPUT_PATH")
    parent = os.path.join(cwd, str(raw)) if raw is not None else cwd
    leaf = make_safe_path(f"{spec.description.name.replace(' ', '_')}_{now.strftime(_TIMESTAMP)}")
    path = os.path.normpath(os.path.join(parent, leaf))
    # Two studies of one spec started in the same second: Maestro's name, then -2, -3, ...
    n = 1
    while os.path.lexists(path if n == 1 else f"{path}-{n}"):
        n += 1
    return path if n == 1 else f"{path}-{n}"
