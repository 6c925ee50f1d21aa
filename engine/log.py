"""Logging set-up: structlog on top of the standard library's handlers.

Two sinks: the terminal (stderr), human-readable on a TTY and JSON lines otherwise, at
WARNING unless ``-v`` is given; and, while a study runs, the study's own log file
``<study>/logs/<name>.log`` as JSON lines at INFO. Events are snake_case past tense with
ids as keys (``step_state_changed step=... state=...``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _import_structlog_without_rich():  # type: ignore[no-untyped-def]
    """Import structlog while ``rich`` is hidden: structlog loads rich (when installed) for
    pretty console tracebacks, which Troupe never renders, and that is about 30 ms of
    every command's start. The hiding ends with the import: anything imported later
    (a ``--pgen`` module, say) sees rich as usual."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog
        return structlog
    sys.modules["rich"] = None  # type: ignore[assignment]  # import rich -> ImportError
    try:
        import structlog
    finally:
        del sys.modules["rich"]
    return structlog


structlog = _import_structlog_without_rich()

__all__ = ["configure_logging", "study_log_file"]

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written: while a progress bar is drawn
    (``engine.progress``) it is rich's proxy, which prints the line above the bar."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(verbosity: int = 0, *, stream=None) -> None:  # type: ignore[no-untyped-def]
    """Route structlog through stdlib logging to stderr.

    Args:
        verbosity: 0 = warnings only, 1 = info, 2+ = debug.
        stream: Where terminal logs go (default ``sys.stderr``).
    """
    stream = stream or _Stderr()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop disabled levels before any work
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    if stream.isatty():
        handler.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        ))
    else:
        handler.setFormatter(_json_formatter())
    handler.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    handler.set_name("troupe-terminal")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "troupe-terminal"]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Records below every handler's level are dropped before any work (a worker's
    # per-task INFO lines cost it CPU on every task); a study's log file lowers it.
    root.setLevel(handler.level)
    for noisy in ("nats", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _StudyLogHandler(logging.FileHandler):
    """The study's log file. If it cannot be written (a full disk), that is said once, on
    stderr, in one line, and the file is given up: the standard handler would print a
    traceback for every record instead."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        reason = getattr(error, "strerror", None) or error or "unknown error"
        try:
            sys.stderr.write(f"warning: cannot write the study's log {self.baseFilename!r}: "
                             f"{reason}; it is no longer written\n")
        except OSError:
            pass  # stderr is gone too: nothing left to tell


@contextmanager
def study_log_file(path: Path) -> Iterator[None]:
    """While the block runs, also write every INFO+ log line to ``path`` as JSON (given up,
    with one warning, if the file cannot be written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _StudyLogHandler(path, encoding="utf-8")
    handler.setFormatter(_json_formatter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(min(level, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        try:
            handler.close()
        except OSError:
            pass  # its last flush failed: already said once
