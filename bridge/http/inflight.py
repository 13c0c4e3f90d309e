"""Requests in flight, so that a stopping server can let them finish before aiohttp's own
shutdown begins: from then on aiohttp reads nothing more from any connection, so a request
whose body is still arriving would wait out the grace period and be cut."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler


class InFlight:
    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def idle(self) -> None:
        """Until no request is in flight."""
        await self._idle.wait()


INFLIGHT = web.AppKey("in_flight", InFlight)


def install_in_flight(app: web.Application) -> None:
    """Outermost, so that it counts what a worker passes on to its primary too."""
    tracker = InFlight()
    app[INFLIGHT] = tracker
    app.middlewares.insert(0, tracker.middleware)
