"""Aborting multipart uploads, for as long as S3 takes to answer.

An upload fails most often because S3 is unreachable or stalls, and then its abort fails
too: the parts already sent would stay billed in the bucket, invisible, until the next
start's sweep (after UPLOAD_EXPIRY) or a lifecycle rule. So an abort that fails is tried
again in the background, with growing pauses, until S3 answers or the process stops.
botocore's retries cover a few seconds; this covers an outage.

The request that failed waits for the first try only briefly, so that a client learns of
the failure within the documented time even when S3 stalls.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from ..errors import GatewayError, NotFound

FIRST_TRY_WAIT = 5.0  # seconds a failed request waits at most for its abort
PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # between tries; the last one repeats
CLOSE_WAIT = 5.0  # seconds given to pending aborts when the storage closes

Abort = Callable[[str, str], Awaitable[object]]


class Aborter:
    def __init__(self, abort: Abort, first_try_wait: float = FIRST_TRY_WAIT) -> None:
        self._abort = abort
        self._first_try_wait = first_try_wait
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def abort(self, key: str, upload_id: str) -> None:
        """Abort the upload, waiting a few seconds at most; tries go on in the background."""
        task = asyncio.create_task(self._until_done(key, upload_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.wait({task}, timeout=self._first_try_wait)

    async def _until_done(self, key: str, upload_id: str) -> None:
        tries = 0
        while True:
            try:
                await self._abort(key, upload_id)
                return
            except NotFound:
                return  # aborted already, or completed after all
            except GatewayError:
                pass
            await asyncio.sleep(PAUSES[min(tries, len(PAUSES) - 1)])
            tries += 1

    async def close(self) -> None:
        """One last chance for the pending aborts; the sweep takes care of the rest."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=CLOSE_WAIT)
        for task in list(self._pending):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._pending, return_exceptions=True)
