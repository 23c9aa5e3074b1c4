"""Admission to the decoder: a bounded queue of requests waiting for one of ``max_concurrent`` slots, each for at
most ``queue_timeout`` seconds, watching its client; and giving memory back between requests.
"""
import ctypes
import functools
import math
import os
import threading
import time
from typing import TYPE_CHECKING

import anyio
from fastapi import HTTPException, Request

if TYPE_CHECKING:
    pass
from captioning.service.limits import ServerSettings
from captioning.service.responses import _send_json


class ClientGone(Exception):
    """The client closed its connection while its request waited or ran."""


class _Ticket:
    """One admitted request: it counts against the queue until it ends or its client is seen to have left."""

    def __init__(self):
        self.running = False
        self.check = None                 # async () -> None: drop the request if its client has left (see run)


class Admission:
    """The bounded queue in front of the ``max_concurrent`` decoding slots.

    The middleware (before the body is read) refuses a request with 503 when ``max_concurrent + max_queue`` are
    already in, after first dropping those whose clients have left; ``run`` waits for a decoding slot for at most
    ``queue_timeout`` seconds (503 beyond), watching the client: one that has gone gives up its place at once, and
    ``gone`` tells its work to stop between photos.
    """

    TICKET = "captioning.ticket"          # the scope key the middleware hands the request's ticket to ``run`` by

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent)
        self.tickets: set[_Ticket] = set()                    # admitted requests, waiting or running
        self.running = 0                                      # slots in use (a left client's work ends its batch)
        self.abandoned = 0                                    # requests dropped because their client left
        self.seconds = 2.0                                    # running mean of a request's work, for Retry-After

    @property
    def inside(self) -> int:
        return len(self.tickets)

    def status(self) -> dict:
        """What /v1/health shows: slots in use, requests waiting (or uploading), dropped as their client left."""
        waiting = sum(not t.running for t in self.tickets)
        return {"running": self.running, "waiting": waiting, "abandoned": self.abandoned,
                "slots": self.settings.max_concurrent, "queue": self.settings.max_queue}

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the requests ahead of a newcomer over the slots, at the mean pace."""
        waiting = max(0, self.inside - self.settings.max_concurrent)
        return max(1, math.ceil(self.seconds * (waiting + 1) / self.settings.max_concurrent))

    def busy(self, why: str) -> HTTPException:
        return HTTPException(503, f"The server is busy ({why}). Retry in {self.retry_after()} s.",
                             headers={"Retry-After": str(self.retry_after())})

    def full(self) -> bool:
        return self.inside >= self.settings.max_concurrent + self.settings.max_queue

    def middleware(self, app):
        async def admit(scope, receive, send):
            if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/captions"):
                return await app(scope, receive, send)
            if self.full():                                   # clients may have left since the last poll
                for ticket in list(self.tickets):
                    if ticket.check is not None:
                        await ticket.check()
            if self.full():
                error = self.busy(f"{self.inside} requests in, the queue holds {self.settings.max_queue}")
                return await _send_json(send, 503, error.detail, error.headers)
            ticket = scope[self.TICKET] = _Ticket()
            self.tickets.add(ticket)
            try:
                await app(scope, receive, send)
            finally:
                self.tickets.discard(ticket)
        return admit

    async def run(self, request: Request, work):
        """Run ``work(gone)`` in a worker thread once a slot is free; ``gone`` is set when the client leaves.
        Raises ClientGone if it left, HTTPException 503 if no slot came within ``queue_timeout``."""
        gone, token = threading.Event(), object()
        ticket = getattr(request, "scope", {}).get(self.TICKET) or _Ticket()
        outcome, timed_out = None, False
        async with anyio.create_task_group() as tasks:
            async def check():
                if not gone.is_set() and await request.is_disconnected():
                    gone.set()
                    self.tickets.discard(ticket)              # its place is free now, even if its batch runs on
                    tasks.cancel_scope.cancel()               # leaves the queue at once

            async def watch():                                # the whole time: while queued and while working
                while not gone.is_set():
                    await check()
                    await anyio.sleep(0.2)

            ticket.check = check
            tasks.start_soon(watch)
            with anyio.move_on_after(self.settings.queue_timeout) as waiting:
                await self.limiter.acquire_on_behalf_of(token)
            timed_out = waiting.cancelled_caught
            if not timed_out:
                self.running += 1
                ticket.running = True
                try:
                    start = time.perf_counter()
                    with anyio.CancelScope(shield=True):      # a thread cannot be interrupted: `gone` stops it
                        outcome = await anyio.to_thread.run_sync(work, gone)
                    self.seconds = 0.8 * self.seconds + 0.2 * (time.perf_counter() - start)
                finally:
                    self.running -= 1
                    self.limiter.release_on_behalf_of(token)
            ticket.check = None
            tasks.cancel_scope.cancel()
        if gone.is_set():
            self.abandoned += 1
            raise ClientGone
        if timed_out:
            raise self.busy(f"no free slot within {self.settings.queue_timeout:g} s")
        return outcome


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt                        # glibc only  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Hand the heap pages freed by a large request back to the OS (glibc keeps them otherwise, and RSS stays at
    the peak for good). A no-op off glibc."""
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each busy thread its own heap (up to 8 per core); freed memory scattered over many of them is
    rarely returned. Two arenas keep the API's RSS near its working set (what ``MALLOC_ARENA_MAX=2`` does)."""
    if (libc := _libc()) is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(-8, arenas)                                 # M_ARENA_MAX
