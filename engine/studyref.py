"""Which study a client means: an id, a unique prefix of one, a study directory, or a
study name (unique among the studies, else among the running ones).

Pure: the service hands it the stored studies (``engine.service``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from engine.errors import ConfigError
from engine.store import StudyEntry

__all__ = ["resolve_study"]

_SHOWN = 8


def resolve_study(ref: str, studies: Sequence[StudyEntry]) -> StudyEntry:
    """The study ``ref`` names.

    Raises:
        ConfigError: no study matches (``unknown study``), or several do (the message
            lists them).
    """
    if not ref:
        raise ConfigError("no study given")
    for s in studies:
        if s.study_id == ref:
            return s
    if os.path.isabs(ref):
        where = os.path.normpath(ref)
        found = [s for s in studies if os.path.normpath(s.study_dir) == where]
        if found:
            return max(found, key=lambda s: s.created)  # the latest study in that directory
    for candidates in ([s for s in studies if s.study_id.startswith(ref)],
                       [s for s in studies if s.name == ref]):
        if len(candidates) == 1:
            return candidates[0]
        running = [s for s in candidates if s.state == "RUNNING"]
        if len(running) == 1:
            return running[0]
        if candidates:
            listed = ", ".join(f"{s.study_id} ({s.name}, {s.state})" for s in candidates[:_SHOWN])
            more = f" and {len(candidates) - _SHOWN} more" if len(candidates) > _SHOWN else ""
            raise ConfigError(f"ambiguous study '{ref}': {len(candidates)} match: {listed}{more}")
    raise ConfigError(f"unknown study {ref}")
