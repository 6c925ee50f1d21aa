"""Cancel and restart from the dashboard, for a session that gave the client password.

The dashboard itself holds only the monitor credential, which changes nothing. A person
who may act pastes the client password (``<state dir>/client.json``) into the page's
"unlock controls" form; ``Controls.unlock`` checks it the only way that proves it, by
connecting to the engine's NATS server as the ``client`` user, and keeps that connection
for the session. Cancel and restart then go through the engine's API on it, with the
requests ``enginectl cancel`` and ``enginectl restart`` send (``engine.client.ask``).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import anyio
import structlog

from engine.bus import Credentials, open_bus
from engine.client import ask
from engine.errors import BusError
from engine.messages import CancelSteps, ControlReply, RestartRequest, new_event_id

if TYPE_CHECKING:
    from engine.bus import Bus

__all__ = ["Controls", "exact_glob"]

_CLIENT_USER = "client"
_FAILED_UNLOCK_DELAY = 1.0  # seconds a wrong password costs (no fast guessing)


def exact_glob(name: str) -> str:
    """A glob (``fnmatch``) that matches ``name`` only: ``*``, ``?`` and ``[`` are
    bracketed, so a step named ``a[1]*`` cancels that step and no other."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


class Controls:
    """The sessions whose controls are unlocked, each with its own client connection."""

    def __init__(self, url: str, *, tls_ca: str | None = None) -> None:
        self.url = url
        self.tls_ca = tls_ca
        self._buses: dict[str, Bus] = {}
        self._stack = AsyncExitStack()
        self._lock = anyio.Lock()
        self._log = structlog.get_logger("troupe.dashboard")

    def unlocked(self, session: str) -> bool:
        """Whether ``session`` gave the client password."""
        return bool(session) and session in self._buses

    async def unlock(self, session: str, password: str) -> bool:
        """Connect as the client user with ``password`` for ``session``; False if the
        server refused it.

        Raises:
            BusError: the server could not be reached (not a refusal).
        """
        if not session or not password:
            return False
        async with self._lock:
            if session in self._buses:
                return True
            try:
                bus = await self._stack.enter_async_context(open_bus(
                    self.url, Credentials(user=_CLIENT_USER, password=password,
                                          tls_ca=self.tls_ca),
                    name="troupe-dashboard-controls", max_reconnect_attempts=-1))
            except BusError as exc:
                if "refused the credentials" not in str(exc):
                    raise
                self._log.warning("dashboard_unlock_refused", session=session[:8])
                await anyio.sleep(_FAILED_UNLOCK_DELAY)
                return False
            self._buses[session] = bus
        self._log.info("dashboard_unlocked", session=session[:8])
        return True

    async def cancel(self, session: str, study_id: str, step: str = "") -> ControlReply:
        """Cancel the study, or one step instance (and its descendants).

        Raises:
            PermissionError: ``session`` has not unlocked the controls.
            BusError: the engine did not answer.
        """
        reply = await ask(self._bus(session), "cancel", CancelSteps(
            event_id=new_event_id(), study_id=study_id, glob=exact_glob(step) if step else "",
            reason="cancelled from the dashboard"))
        assert isinstance(reply, ControlReply)
        self._log.info("dashboard_cancelled", study_id=study_id, step=step, ok=reply.ok)
        return reply

    async def restart(self, session: str, study_id: str) -> ControlReply:
        """Restart a study that is not running (its failed and cancelled steps).

        Raises:
            PermissionError: ``session`` has not unlocked the controls.
            BusError: the engine did not answer.
        """
        reply = await ask(self._bus(session), "restart", RestartRequest(
            event_id=new_event_id(), study_id=study_id))
        assert isinstance(reply, ControlReply)
        self._log.info("dashboard_restarted", study_id=study_id, ok=reply.ok)
        return reply

    def _bus(self, session: str) -> Bus:
        bus = self._buses.get(session)
        if bus is None:
            raise PermissionError("the controls are locked: unlock them with the client password")
        return bus

    async def aclose(self) -> None:
        """Close every session's connection."""
        self._buses.clear()
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()
