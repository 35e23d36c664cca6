"""Aggregated logging of dropped datagrams (sans-I/O: the caller passes ``now``).

Garbage from any address, spoofed or a peer's own, used to log one line per datagram (101 MB of log
for 3 million datagrams). Now the first drop of an interval is logged in full, so an operator still
sees what went wrong, and the rest of the interval is counted per reason and summed up in one line
when the interval is over (:meth:`DropLog.flush`, called from housekeeping and on the next drop).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["DROP_LOG_INTERVAL", "DropLog"]

DROP_LOG_INTERVAL = 10.0


class DropLog:
    """At most two log lines per interval: the first drop in full, then counts per reason."""

    def __init__(self, logger: logging.Logger, interval: float = DROP_LOG_INTERVAL) -> None:
        self._log = logger
        self._interval = interval
        self._until: float | None = None
        self._suppressed: dict[str, int] = {}

    def quiet(self, reason: str, now: float) -> bool:
        """Count a drop held back inside the interval (True); False: the caller logs it with ``drop``.

        For callers whose log arguments cost something to compute, on a path a flood takes.
        """
        if self._until is not None and now < self._until:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return True
        return False

    def drop(self, reason: str, now: float, level: int, msg: str, *args: Any) -> None:
        """One dropped datagram; ``msg % args`` is only formatted if it is logged."""
        if self.quiet(reason, now):
            return
        self.flush(now)
        self._until = now + self._interval
        self._log.log(level, msg, *args)

    def flush(self, now: float) -> None:
        """Log the counts of the interval that is over (if any were held back)."""
        if not self._suppressed or (self._until is not None and now < self._until):
            return
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self._suppressed.items()))
        total = sum(self._suppressed.values())
        self._log.warning("Dropped %d more datagrams since the last report (%s)", total, counts)
        self._suppressed = {}

    @property
    def suppressed(self) -> dict[str, int]:
        """Drops counted but not logged yet, by reason."""
        return dict(self._suppressed)
