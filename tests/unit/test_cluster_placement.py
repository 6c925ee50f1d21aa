"""A serve engine that starts beside a cluster still forming waits for room for its
replicas ("no suitable peers for placement") instead of failing at once; any other
refusal fails at once."""

from __future__ import annotations

import pytest

from engine.bus import placed as _placed
from engine.errors import BusError, StoreError

PEER_OFFLINE = "cannot create stream TROUPE_EVENTS: nats: BadRequestError: code=400 " \
               "err_code=10005 description='no suitable peers for placement, peer offline'"


async def test_a_placement_refused_while_the_cluster_forms_is_asked_again() -> None:
    calls: list[int] = []

    async def make() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise (BusError(PEER_OFFLINE, "nats://x") if len(calls) == 1
                   else StoreError(PEER_OFFLINE))
        return "made"

    assert "made" == await _placed(make, patience=10)
    assert 3 == len(calls)


async def test_another_refusal_or_no_room_after_the_patience_fails() -> None:
    async def refused() -> None:
        raise BusError("cannot create stream TROUPE_EVENTS: permissions violation", "nats://x")

    async def never_room() -> None:
        raise BusError(PEER_OFFLINE, "nats://x")

    with pytest.raises(BusError, match="permissions"):
        await _placed(refused, patience=10)
    with pytest.raises(BusError, match="no suitable peers"):
        await _placed(never_room, patience=0.6)
