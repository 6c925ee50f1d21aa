"""Subjects: step names become one safe, reversible token."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from engine import subjects

TOKEN = re.compile(r"^[A-Za-z0-9_~-]+$")


@given(st.text())
def test_any_step_name_encodes_to_one_safe_reversible_token(name: str) -> None:
    token = subjects.encode_token(name)
    assert TOKEN.match(token)
    assert name == subjects.decode_token(token)


def test_maestro_instance_names_are_encoded_as_documented() -> None:
    assert "say_hi_NAME~2ePam" == subjects.encode_token("say_hi_NAME.Pam")
    assert "a~20b~2a~3e" == subjects.encode_token("a b*>")


def test_step_event_subject_has_a_fixed_number_of_tokens() -> None:
    subject = subjects.step_event("s1", "say-bye_FAREWELL.So long.NAME.Pam", "FINISHED")
    assert 7 == len(subject.split("."))
    assert subject.startswith("troupe.v1.events.s1.step.")
    assert subject.endswith(".finished")
