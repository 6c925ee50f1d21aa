"""Log records no sink writes are dropped before any work: a worker without ``-v`` does not
format two INFO lines per task only for its terminal handler to throw them away, while a
study's log file still gets every INFO line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from engine.log import configure_logging, study_log_file


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.parametrize(("verbosity", "info"), [(0, False), (1, True), (2, True)])
def test_info_is_enabled_only_when_a_sink_writes_it(root_level: None, verbosity: int,
                                                    info: bool) -> None:
    configure_logging(verbosity)
    assert info == logging.getLogger("troupe.worker").isEnabledFor(logging.INFO)
    assert logging.getLogger("troupe.worker").isEnabledFor(logging.WARNING)


def test_a_study_log_file_gets_info_lines_and_gives_the_level_back(root_level: None,
                                                                   tmp_path: Path) -> None:
    configure_logging(0)
    log = structlog.get_logger("troupe.test")
    path = tmp_path / "logs" / "study.log"
    with study_log_file(path):
        log.info("inside_the_study", step="a")
    log.info("after_the_study")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert ["inside_the_study"] == [x["event"] for x in lines]
    assert not logging.getLogger("troupe.test").isEnabledFor(logging.INFO)
