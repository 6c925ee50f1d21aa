"""A study named by id, prefix, directory or name (engine.studyref)."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from engine.store import StudyEntry
from engine.studyref import resolve_study


def entry(study_id: str, name: str, state: str = "FINISHED", created: float = 0.0,
          study_dir: str = "") -> StudyEntry:
    return StudyEntry(study_id=study_id, name=name, spec_path="s.yaml", spec_text="",
                      study_dir=study_dir or f"/studies/{study_id}", cwd="/", state=state,
                      created=created)


STUDIES = [
    entry("alpha-20261207-010101-aaaa", "alpha", "FINISHED", 1.0),
    entry("alpha-20261207-020202-bbbb", "alpha", "RUNNING", 2.0),
    entry("beta-20261207-010101-cccc", "beta", "FAILURE", 3.0, "/work/b"),
    entry("gamma-20261207-010101-dddd", "gamma", "FINISHED", 4.0),
    entry("gamma-20261207-020202-eeee", "gamma", "CANCELLED", 5.0),
]


@pytest.mark.parametrize(("ref", "want"), [
    ("beta-20261207-010101-cccc", "beta-20261207-010101-cccc"),  # the id
    ("beta-2026", "beta-20261207-010101-cccc"),  # a unique prefix
    ("beta", "beta-20261207-010101-cccc"),  # a name used once
    ("alpha", "alpha-20261207-020202-bbbb"),  # a name, the one running
    ("alpha-20261207-01", "alpha-20261207-010101-aaaa"),
    ("/work/b", "beta-20261207-010101-cccc"),  # its directory
    ("/work/b/", "beta-20261207-010101-cccc"),
])
def test_a_study_is_found_by_id_prefix_name_or_directory(ref: str, want: str) -> None:
    assert want == resolve_study(ref, STUDIES).study_id


def test_an_ambiguous_reference_lists_the_candidates() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_study("gamma", STUDIES)
    message = str(err.value)
    assert message.startswith("ambiguous study 'gamma': 2 match:")
    assert "gamma-20261207-010101-dddd (gamma, FINISHED)" in message
    assert "gamma-20261207-020202-eeee (gamma, CANCELLED)" in message


@pytest.mark.parametrize("ref", ["delta", "/nowhere", "alphabet"])
def test_an_unknown_reference_says_so(ref: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown study {ref}"):
        resolve_study(ref, STUDIES)
