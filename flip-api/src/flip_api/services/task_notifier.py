"""Wake long-polling trusts the moment work is enqueued for them (PostgreSQL LISTEN/NOTIFY).

One listening connection per hub process.  ``enqueue_task`` sends ``NOTIFY flip_trust_tasks, '<trust id>'``
inside the enqueuing transaction, so the notification is delivered on commit — to every hub replica.
Waiters register per trust and are woken by the notification; if the listener is down they simply wait
out their timeout and re-check, so a lost notification delays work but never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "flip_trust_tasks"


class TaskNotifier:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._waiters: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="task-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    delay = 0.5
                    # Wake everyone once on (re)connect: anything enqueued while we were away is found.
                    self._wake_all()
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.listening.clear()
                log.warning("task notifier lost its connection; reconnecting", exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _wake(self, payload: str) -> None:
        try:
            trust_id = uuid.UUID(payload)
        except ValueError:
            return
        for event in self._waiters.get(trust_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def subscription(self, trust_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever work may be pending for ``trust_id``.

        Subscribe *before* looking for work: a task enqueued between the look and the wait then
        still sets the event, so no wake-up is lost to that race.
        """
        event = asyncio.Event()
        self._waiters[trust_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(trust_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[trust_id]

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())
