"""What the step panel reads from disk: the tail of an instance's ``.out``/``.err`` and
who ran each attempt, bounded, and never outside the study directory.

Only files in the instance's own workspace (``meta/study.json`` names it) are read, by
a bare file name ending in ``.out`` or ``.err``; the path is resolved (symbolic links
followed) and refused unless it lies inside the study directory, so neither a name like
``../../etc/passwd`` nor a link that a step planted in its workspace reads anything else.
At most ``TAIL_BYTES`` of a file's end are read.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["TAIL_BYTES", "OutsideStudy", "attempt_hosts", "output_files", "tail"]

TAIL_BYTES = 16_384
TAIL_LINES = 40
_MAX_LISTED = 10_000  # directory entries looked at, at most
_CLAIM_BYTES = 256


class OutsideStudy(Exception):
    """Raised when a requested file is not a step output inside the study directory
    (a path in the name, another suffix, or a link that leads out)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r}: not an output file of this step")
        self.name = name


def _inside(path: Path, root: Path) -> Path:
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise OutsideStudy(path.name)
    return real


def output_files(study_dir: str, workspace: str) -> list[dict[str, object]]:
    """The ``.out``/``.err`` files of a workspace, newest first: name, size, mtime.

    Raises:
        OutsideStudy: the workspace itself is not inside the study directory.
    """
    root, ws = Path(study_dir), Path(workspace)
    _inside(ws, root)
    found = []
    try:
        with os.scandir(ws) as entries:
            for i, entry in enumerate(entries):
                if i >= _MAX_LISTED:
                    break
                if entry.name.endswith((".out", ".err")) and entry.is_file(follow_symlinks=False):
                    stat = entry.stat(follow_symlinks=False)
                    found.append({"name": entry.name, "size": stat.st_size,
                                  "mtime": stat.st_mtime})
    except OSError:
        return []
    found.sort(key=lambda f: (-float(f["mtime"]), str(f["name"])))  # type: ignore[arg-type]
    return found


def tail(study_dir: str, workspace: str, name: str, *, lines: int = TAIL_LINES
         ) -> dict[str, object]:
    """The last ``lines`` lines (within ``TAIL_BYTES``) of the file ``name`` of a workspace.

    Returns:
        ``name``, ``text`` (decoded, invalid bytes replaced), ``size`` and ``truncated``
        (the file holds more than was read).

    Raises:
        OutsideStudy: ``name`` is not a bare ``.out``/``.err`` name, or the file
            resolves outside the study directory.
        FileNotFoundError: no such file.
    """
    if (not name or "/" in name or "\\" in name or "\x00" in name or name in (".", "..")
            or not name.endswith((".out", ".err"))):
        raise OutsideStudy(name)
    root = Path(study_dir)
    _inside(Path(workspace), root)
    real = _inside(Path(workspace) / name, root)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - TAIL_BYTES))
        data = fh.read(TAIL_BYTES)
    text = data.decode("utf-8", errors="replace")
    kept = text.splitlines()[-lines:]
    return {"name": name, "text": "\n".join(kept), "size": size,
            "truncated": size > len(data) or len(text.splitlines()) > lines}


def attempt_hosts(study_dir: str, workspace: str, attempts: list[int]) -> dict[int, str]:
    """Who ran each attempt, from its claim (``.troupe.<n>.pid``: ``worker NAME PID`` for
    a worker, a pid for a local process): ``{attempt: "worker NAME"}`` or ``"pid N"``."""
    out: dict[int, str] = {}
    root = Path(study_dir)
    for n in attempts[-20:]:
        try:
            real = _inside(Path(workspace) / f".troupe.{n}.pid", root)
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                first = fh.read(_CLAIM_BYTES).decode("utf-8", "replace").splitlines()
        except (OSError, OutsideStudy):
            continue
        words = first[0].split() if first else []
        if len(words) >= 2 and words[0] == "worker":
            out[n] = f"worker {words[1]}"
        elif words and words[0].isdigit():
            out[n] = f"pid {words[0]}"
    return out
