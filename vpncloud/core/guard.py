"""Flood protection for handshake messages (sans-I/O token buckets).

Theory of operation
-------------------
Every handshake message (first byte 0xFF) that is not answered from an established session costs an
Ed25519 signature check, and a valid PING additionally an X25519 key pair, a key exchange and a signed
PONG. An attacker who floods PINGs can therefore burn the node's CPU. :class:`HandshakeGuard` sits in
front of that work in :class:`~vpncloud.core.node.Node`:

1. a **per-source** token bucket, keyed by the source *host* (the port is ignored, so hopping ports does
   not buy fresh tokens), held in an LRU map of at most ``max_sources`` entries (bounded memory: a flood
   from spoofed addresses only recycles entries; an evicted source comes back with a full bucket);
2. the node's cheap key-hash check (a SHA-256 per trusted key; forged PINGs with a random key hash stop
   here and do not consume global tokens);
3. a **global** token bucket for the messages that will reach the signature check.

Buckets refill continuously from the ``now`` the caller passes in (monotonic seconds); nothing here
reads a clock. Drops are counted per reason for ``Node.status()``.

Amplification budget (optional, ``GuardConfig.amplification_budget``): a PONG (~241 bytes) is larger
than the PING (~155 bytes) that provokes it. With the budget on, a responder that has not contacted the
address itself only sends as many bytes to it as it has received from it; the PONG then goes out with
the initiator's first PING retransmission (the original retransmits every tick), so the handshake stays
wire-compatible and just completes one tick later. Off by default to keep the original's timing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["GuardConfig", "GuardCounters", "HandshakeGuard", "TokenBucket"]


@dataclass(frozen=True)
class GuardConfig:
    """Limits; rates in messages per second, bursts in messages."""

    per_source_rate: float = 10.0
    per_source_burst: float = 20.0
    global_rate: float = 200.0
    global_burst: float = 400.0
    max_sources: int = 4096
    amplification_budget: bool = False
    #: Seconds an address's byte budget is kept (bounded by ``max_sources`` as well).
    budget_ttl: float = 130.0

    def __post_init__(self) -> None:
        if min(self.per_source_rate, self.per_source_burst, self.global_rate, self.global_burst) <= 0:
            raise ValueError("guard rates and bursts must be positive")
        if self.max_sources < 1:
            raise ValueError("max_sources must be at least 1")


@dataclass
class GuardCounters:
    """What the guard let through or dropped (JSON-able via :meth:`as_dict`)."""

    allowed: int = 0
    dropped_source: int = 0
    dropped_global: int = 0
    dropped_amplification: int = 0
    evicted_sources: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "allowed": self.allowed,
            "dropped_source": self.dropped_source,
            "dropped_global": self.dropped_global,
            "dropped_amplification": self.dropped_amplification,
            "evicted_sources": self.evicted_sources,
        }


@dataclass
class TokenBucket:
    """A token bucket driven by the caller's clock."""

    rate: float
    burst: float
    tokens: float
    last: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Refill up to ``now`` and take ``cost`` tokens if there are enough."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


@dataclass
class _Budget:
    received: int = 0
    sent: int = 0
    last: float = 0.0


@dataclass
class HandshakeGuard:
    """Per-source and global limits for handshake processing (see the module docstring)."""

    config: GuardConfig = field(default_factory=GuardConfig)
    counters: GuardCounters = field(default_factory=GuardCounters)

    def __post_init__(self) -> None:
        self._sources: OrderedDict[str, TokenBucket] = OrderedDict()
        self._global: TokenBucket | None = None
        self._budgets: OrderedDict[tuple[str, int], _Budget] = OrderedDict()

    # --- rate limits -----------------------------------------------------------------------------

    def allow_source(self, host: str, now: float) -> bool:
        """Per-source limit; call first, for every handshake message that may need a signature check."""
        bucket = self._sources.get(host)
        if bucket is None:
            cfg = self.config
            bucket = TokenBucket.full(cfg.per_source_rate, cfg.per_source_burst, now)
            self._sources[host] = bucket
            if len(self._sources) > cfg.max_sources:
                self._sources.popitem(last=False)
                self.counters.evicted_sources += 1
        else:
            self._sources.move_to_end(host)
        if bucket.take(now):
            return True
        self.counters.dropped_source += 1
        return False

    def allow_global(self, now: float) -> bool:
        """Global limit; call right before the signature check."""
        if self._global is None:
            self._global = TokenBucket.full(self.config.global_rate, self.config.global_burst, now)
        if self._global.take(now):
            self.counters.allowed += 1
            return True
        self.counters.dropped_global += 1
        return False

    @property
    def tracked_sources(self) -> int:
        return len(self._sources)

    # --- amplification budget --------------------------------------------------------------------

    def note_received(self, addr: tuple[str, int], size: int, now: float) -> None:
        """Count bytes received from an address that has no established session."""
        if not self.config.amplification_budget:
            return
        budget = self._budget(addr, now)
        budget.received += size

    def may_send(self, addr: tuple[str, int], size: int, now: float) -> bool:
        """Whether a reply of ``size`` bytes to a not yet authenticated address fits the budget."""
        if not self.config.amplification_budget:
            return True
        budget = self._budget(addr, now)
        if budget.sent + size <= budget.received:
            budget.sent += size
            return True
        self.counters.dropped_amplification += 1
        return False

    def forget(self, addr: tuple[str, int]) -> None:
        """The address completed a handshake (or we contacted it): no budget needed any more."""
        self._budgets.pop(addr, None)

    def _budget(self, addr: tuple[str, int], now: float) -> _Budget:
        budget = self._budgets.get(addr)
        if budget is None or now - budget.last > self.config.budget_ttl:
            budget = _Budget()
            self._budgets[addr] = budget
            if len(self._budgets) > self.config.max_sources:
                self._budgets.popitem(last=False)
        else:
            self._budgets.move_to_end(addr)
        budget.last = now
        return budget

    def snapshot(self) -> dict[str, int]:
        """Counters plus the number of tracked sources, for ``Node.status()``."""
        out = self.counters.as_dict()
        out["tracked_sources"] = len(self._sources)
        return out
