"""``python -m engine.notify EXIT_FILE EXIT_CODE``: a scheduler job's trailer tells the
engine that it ended, over NATS, when the compute node can reach the server.

The engine puts the command in the job's environment as ``TROUPE_NOTIFY`` (with the
server URL and subject as arguments, and credentials in ``TROUPE_NOTIFY_USER`` /
``TROUPE_NOTIFY_PASSWORD``). The message (``job_reported``) names the exit file and the
status; the engine hands it to the adapter's watcher, which takes it as if it had read
the file. This is best effort: the exit file and the batched reconciler stay the
authority, so a node without network access loses nothing but a few milliseconds. The
command never fails the job: any error exits 0 after at most a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import sys

__all__ = ["main"]


async def _send(url: str, subject: str, exit_file: str, code: int) -> None:
    from engine.bus import Credentials, open_bus
    from engine.messages import JobReported, new_event_id

    creds = Credentials(user=os.environ.get("TROUPE_NOTIFY_USER") or None,
                        password=os.environ.get("TROUPE_NOTIFY_PASSWORD") or None)
    async with open_bus(url, creds, connect_timeout=2, name="troupe-notify",
                        max_reconnect_attempts=0) as bus:
        msg = JobReported(event_id=new_event_id(), exit_file=exit_file, exit_code=code)
        await bus.publish(subject, msg)
        await bus.flush(timeout=2)


def main(argv: list[str] | None = None) -> int:
    """``URL SUBJECT EXIT_FILE EXIT_CODE``; always returns 0."""
    args = sys.argv[1:] if argv is None else argv
    try:
        url, subject, exit_file, code = args
        asyncio.run(asyncio.wait_for(_send(url, subject, exit_file, int(code)), timeout=4))
    except Exception:  # noqa: BLE001 - best effort by design: the exit file is the authority
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
