"""A JetStream key-value bucket, the bus's store half (opened by ``Bus.key_value``).

With ``engine.bus`` the only module that touches nats-py: its errors are translated here,
``StoreError``/``StoreConflict``, and do not leave.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from nats.errors import Error as NatsError
from nats.js.client import KV_PRE_TEMPLATE, KV_STREAM_TEMPLATE, JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from engine.errors import StoreConflict, StoreError

__all__ = ["KeyValueBucket"]


class KeyValueBucket:
    """One JetStream key-value bucket; open it with ``Bus.key_value``.

    Values are bytes; a revision is the sequence number of a key's write in the bucket's
    stream. nats-py's errors do not leave this class: a missing key reads as None, a lost
    compare-and-swap raises ``StoreConflict``, anything else ``StoreError``.
    """

    def __init__(self, name: str, kv: KeyValue, js: JetStreamContext) -> None:
        self.name = name
        self._kv = kv
        self._js = js

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """The key's current value and its revision.

        Returns:
            None if the key was never written, or was deleted or purged.

        Raises:
            StoreError: the read failed (bus disconnected, timeout, bad key).
        """
        with store_errors("get", self.name, key):
            try:
                entry = await self._kv.get(key)
            except NotFoundError:  # KeyNotFoundError (also for a deleted key) among them
                return None
        if entry.value is None:
            return None
        return entry.value, entry.revision

    async def put(self, key: str, value: bytes) -> int:
        """Write ``value`` whatever the key holds; return the new revision.

        Raises:
            StoreError: the write failed or was not acknowledged.
        """
        with store_errors("put", self.name, key):
            return await self._kv.put(key, value)

    async def create(self, key: str, value: bytes) -> int:
        """Write ``value`` only if the key has none (a deleted key counts as none).

        Returns:
            The new revision.

        Raises:
            StoreConflict: the key has a value; nothing was written.
            StoreError: the write failed or was not acknowledged.
        """
        with store_errors("create", self.name, key):
            return await self._kv.create(key, value)

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        """Write ``value`` only if the key's latest revision is ``last`` (compare-and-swap).

        Returns:
            The new revision.

        Raises:
            StoreConflict: the key's latest revision is not ``last``; nothing was written.
            StoreError: the write failed or was not acknowledged.
        """
        with store_errors("update", self.name, key, last=last):
            return await self._kv.update(key, value, last=last)

    async def purge(self, key: str) -> None:
        """Remove the key and every revision of it.

        Raises:
            StoreError: the purge failed or was not acknowledged.
        """
        with store_errors("purge", self.name, key):
            await self._kv.purge(key)

    async def keys(self, pattern: str = ">") -> list[str]:
        """The keys matching ``pattern`` (a NATS wildcard) that have a message in the stream.

        One stream-info request answers it, which the server computes under the stream's
        lock, so no key written before the request is missing. Deleted and purged keys are
        included (their last message is a marker): read each key to skip them. The server
        lists at most 100,000 subjects in one answer (``JSMaxSubjectDetails``) and this
        reads one answer, so past that many matching keys the list is incomplete.

        Raises:
            StoreError: the request failed.
        """
        prefix = KV_PRE_TEMPLATE.format(bucket=self.name)
        with store_errors("list keys", self.name, pattern):
            info = await self._js.stream_info(KV_STREAM_TEMPLATE.format(bucket=self.name),
                                              subjects_filter=prefix + pattern)
        return [subject[len(prefix):] for subject in (info.state.subjects or {})]


@contextmanager
def store_errors(operation: str, bucket: str, key: str = "", *,
                  last: int | None = None) -> Iterator[None]:
    """Translate nats-py's errors in the block: a lost compare-and-swap (only ``create``,
    ``last`` None, and ``update`` can lose one) to ``StoreConflict``, the rest to
    ``StoreError``."""
    try:
        yield
    except KeyWrongLastSequenceError as exc:
        expected = "no value" if last is None else f"revision {last}"
        raise StoreConflict(f"{operation} {bucket}/{key}: expected {expected}",
                            bucket=bucket, key=key, last=last) from exc
    except (NatsError, TimeoutError) as exc:
        raise StoreError(f"{operation} {bucket}/{key} failed: {exc or type(exc).__name__}",
                         bucket=bucket, key=key) from exc
