"""Which replica serves a request: least outstanding requests among the upstreams not ejected.

An upstream is ejected after `max_failures` failures in a row (it could not be reached, timed
out, answered 5xx or sent a broken stream) and stays out for `eject_for` seconds, or until a
health check succeeds. When the time is up it is tried again; one more failure ejects it again,
one success clears its record. Only the event loop touches this state, so it needs no locks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from bridge.upstream.catalog import Replica
from bridge.upstream.config import UpstreamConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Member:
    """One upstream's record: requests in flight and recent failures."""

    config: UpstreamConfig
    outstanding: int = 0
    failures: int = 0  # in a row
    ejected_until: float = 0.0
    last_error: str | None = None

    def available(self, now: float) -> bool:
        return self.failures < self.config.max_failures or now >= self.ejected_until

    def succeeded(self) -> None:
        if self.failures >= self.config.max_failures:
            log.info("upstream %s is healthy again", self.config.name)
        self.failures = 0
        self.ejected_until = 0.0
        self.last_error = None

    def failed(self, reason: str, now: float) -> None:
        self.failures += 1
        self.last_error = reason
        if self.failures >= self.config.max_failures and self.config.eject_for > 0:
            if now >= self.ejected_until:
                log.warning(
                    "upstream %s ejected for %gs after %d failures in a row: %s",
                    self.config.name,
                    self.config.eject_for,
                    self.failures,
                    reason,
                )
            self.ejected_until = now + self.config.eject_for


class Balancer:
    """Picks replicas; ties between equally busy ones go round-robin."""

    def __init__(self, members: dict[str, Member], clock: Callable[[], float]) -> None:
        self.members = members
        self._clock = clock
        self._turn = 0

    def pick(
        self, replicas: Sequence[Replica], tried: Collection[Replica]
    ) -> tuple[Replica, Member] | None:
        now = self._clock()
        if len(replicas) == 1:  # the common case, without the bookkeeping
            r = replicas[0]
            m = self.members[r.upstream]
            return (r, m) if r not in tried and m.available(now) else None
        candidates = [
            (r, m)
            for r in replicas
            if r not in tried and (m := self.members[r.upstream]).available(now)
        ]
        if not candidates:
            return None
        self._turn += 1
        n, turn = len(candidates), self._turn
        best = min(range(n), key=lambda i: (candidates[i][1].outstanding, (i - turn) % n))
        return candidates[best]

    def unavailable(self, replicas: Sequence[Replica]) -> str:
        """Why none of `replicas` can take a request (for the error message)."""
        reasons = []
        for r in replicas:
            m = self.members[r.upstream]
            reasons.append(f"{r.upstream}: {m.last_error or 'ejected'}")
        return "; ".join(reasons)
