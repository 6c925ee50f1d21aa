"""Under CI the peer spec corpus must be there: its absence would otherwise turn the
tests that read it into skips (and the differential tests into empty parameter sets)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import PEER_SPECS


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only under CI=true")
def test_the_peer_spec_corpus_is_present_under_ci() -> None:
    assert (PEER_SPECS / "maestro").is_dir() and (PEER_SPECS / "merlin").is_dir(), (
        f"the peer spec corpus is missing at {PEER_SPECS}")
