"""Flood protection for handshake messages (sans-I/O token buckets, replay and pending bounds).

Theory of operation
-------------------
Every handshake message (first byte 0xFF) that is not answered from an established session costs an
Ed25519 signature check, and a valid PING additionally an X25519 key pair, a key exchange and a signed
PONG. An attacker who floods PINGs can burn the node's CPU, fill its memory with half-open handshakes,
or (replaying a captured, validly signed PING from spoofed addresses) turn it into a reflector.
:class:`HandshakeGuard` sits in front of that work in :class:`~vpncloud.core.node.Node`, in this order:

0. the **bad-signature table** (:meth:`HandshakeGuard.record_bad_signature`): the bytes of every handshake
   datagram whose signature failed, at most ``max_sources`` of them. The signature check is a pure
   function of those bytes and the trusted keys, so a byte-identical copy, from any address, would fail
   again: it is dropped by one dict lookup, before it costs a bucket, a parse or a global token (a
   flood of one forged PING with a trusted key hash cost ~3.6 µs per datagram in the core and spent the
   whole global bucket on signature checks, so legitimate PINGs from new addresses were refused). The
   table is emptied when the trusted keys change (:meth:`HandshakeGuard.keys_changed`). A flood that
   varies the bytes misses it and meets the limits below;
1. a **per-address** token bucket keyed by ``(host, port)``. Keying by host alone let ~20 spoofed
   PINGs per second carrying a peer's IP (any other port) starve that peer's own handshakes. So that
   hopping ports does not buy fresh buckets, a new ``(host, port)`` entry is only created with a token
   from that host's **new-address** bucket (``per_host_new_rate``/``_burst``): an attacker owning
   one IP gets at most ``per_host_new_rate`` fresh buckets per second. Addresses the node already knows
   (established peers, handshakes it started itself) skip that charge, so a peer restarting behind a
   host that is being spoofed still gets its own bucket;
2. both tables hold at most ``max_sources`` entries. An entry is evicted only when it holds no
   information (its bucket has refilled to the burst); when the table is full of live entries, new
   addresses share one **overflow** bucket instead of getting a full one each, so a flood from more than
   ``max_sources`` addresses cannot reset every budget;
3. the node's cheap key-hash check (a SHA-256 per trusted key): PINGs matching no trusted key are
   dropped and counted right there, with no responder object, no parse and no log line of their own;
4. the **PING replay table** (:meth:`HandshakeGuard.ping_allowed`): the initiator's ephemeral public
   key of every verified PING is remembered with the address it came from (``replay_ttl`` seconds,
   ``max_sources`` entries). The same PING from a second address is dropped after a field parse but
   before the global bucket and the signature check, so one captured PING is answered at most once
   however many addresses replay it, and replays do not drain the global bucket. Entries are recorded
   only after the signature verified, so a forgery cannot poison the table. (An attacker on the path
   who races a PING to us from another address first holds that one PING off; the initiator's next
   attempt, with a fresh key, gets through.);
5. a **global** token bucket for the messages that will reach the signature check. A flood that
   varies its forged signatures spends it (every such datagram needs a check), and with it the chance
   of every legitimate PING from outside. Hosts that completed a handshake with us before
   (:meth:`HandshakeGuard.remember_peer`, at most ``max_sources``) keep a small **reserve** each
   (``returning_rate``/``_burst``) that serves them when the global bucket is spent, so a peer that
   restarts or roams back during such a flood rejoins. An attacker who spoofs remembered hosts gets at
   most one reserve per host of the mesh, and no more than before from anywhere else;
6. **pending bounds** (:meth:`HandshakeGuard.admit_pending`): at most ``max_pending_per_host``
   half-open handshakes started by one host and ``max_pending`` in total; beyond the total the oldest
   one started by a peer is dropped (the node's side; an honest initiator repeats its PING).

Buckets refill continuously from the ``now`` the caller passes in (monotonic seconds); nothing here
reads a clock. Drops are counted per reason for ``Node.status()``.

Amplification budget (``GuardConfig.amplification_budget``, **on by default**): a PONG (~241 bytes) is
larger than the PING (~155 bytes) that provokes it. A responder that has not contacted the address
itself, and has no session with it, sends it at most as many bytes as it has received from it. The
responder also never repeats its PONG on its own timer (the original does, every tick for up to 120
ticks): it repeats it only in answer to a repeated PING. An initiator repeats its PING every tick (~2 s
in the original), so the first PONG goes out with the first PING repetition and the handshake completes
one tick later, without a byte of the wire format changing. After a flood, nothing is sent to an
address that never answered.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field

from .droplog import DROP_LOG_INTERVAL

__all__ = [
    "GUARD_AT_LEAST_ONE",
    "GUARD_DOC",
    "GuardConfig",
    "GuardCounters",
    "HandshakeGuard",
    "TokenBucket",
    "guard_limit_problem",
]

SocketAddr = tuple[str, int]


@dataclass(frozen=True)
class GuardConfig:
    """Limits; rates in messages per second, bursts in messages."""

    per_source_rate: float = 10.0
    per_source_burst: float = 20.0
    #: New ``(host, port)`` entries one host may create (the price of port hopping).
    per_host_new_rate: float = 2.0
    per_host_new_burst: float = 8.0
    global_rate: float = 200.0
    global_burst: float = 400.0
    #: Per host that completed a handshake with us before: what it may still bring to the signature
    #: check once the global bucket is spent (a peer rejoining during a flood).
    returning_rate: float = 1.0
    returning_burst: float = 4.0
    max_sources: int = 4096
    amplification_budget: bool = True
    #: Seconds an address's byte budget is kept (bounded by ``max_sources`` as well).
    budget_ttl: float = 130.0
    #: Half-open handshakes started by peers: per host and in total.
    max_pending_per_host: int = 8
    max_pending: int = 256
    #: Seconds a verified PING's ephemeral key stays bound to its address (> an initiator's 120
    #: retransmission ticks of ~2 s in the original).
    replay_ttl: float = 300.0
    #: Seconds between the node's aggregated drop-log lines (``droplog.py``), not a limit of the guard
    #: itself but part of what a flood costs (log volume).
    drop_log_interval: float = DROP_LOG_INTERVAL

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            problem = guard_limit_problem(name, value)
            if problem:
                raise ValueError(f"{name}: {problem}")


#: Limits that must be at least 1, the others (bool aside) only positive. A message costs one token,
#: so a burst below 1 would refuse every message for good; the counts are table sizes. This and
#: :class:`GuardConfig` are the one description of the limits: the daemon's ``handshake-guard:``
#: section and ``mesh.yaml``'s ``handshake_guard`` block are both checked against them.
GUARD_AT_LEAST_ONE = frozenset(
    {"per_source_burst", "per_host_new_burst", "global_burst", "returning_burst", "max_sources",
     "max_pending_per_host", "max_pending"}
)  # fmt: skip


#: What each limit means, for the descriptions of the config schemas (mesh.yaml, Ansible).
GUARD_DOC = {
    "per_source_rate": "Handshake messages per second from one address (host and port).",
    "per_source_burst": "Burst of handshake messages from one address.",
    "per_host_new_rate": "New addresses (ports) one host may open per second: the price of port hopping.",
    "per_host_new_burst": "Burst of new addresses one host may open.",
    "global_rate": "Messages per second that reach the signature check, all sources together.",
    "global_burst": "Burst of messages that reach the signature check, all sources together.",
    "returning_rate": "Per host that completed a handshake before: messages per second it may still "
    "bring to the signature check when the global limit is spent.",
    "returning_burst": "Burst of the reserve of a host that completed a handshake before.",
    "max_sources": "Addresses (and hosts) tracked with their own bucket; also bounds the replay, "
    "byte-budget and bad-signature tables.",
    "amplification_budget": "Send an address that has not proved it receives at most as many bytes as "
    "it sent.",
    "budget_ttl": "Seconds an address's byte budget is remembered.",
    "max_pending_per_host": "Half-open handshakes started by one host.",
    "max_pending": "Half-open handshakes started by all peers together.",
    "replay_ttl": "Seconds a verified PING's ephemeral key stays bound to the address it came from.",
    "drop_log_interval": "Seconds between the aggregated log lines about dropped datagrams.",
}


def guard_limit_problem(name: str, value: object) -> str | None:
    """What is wrong with one limit of :class:`GuardConfig` (None: nothing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # the type is the reader's business (strict YAML, pydantic)
    if name in GUARD_AT_LEAST_ONE:
        return None if value >= 1 else "must be at least 1"
    return None if value > 0 else "must be positive"


@dataclass
class GuardCounters:
    """What the guard let through or dropped (JSON-able via :meth:`as_dict`)."""

    allowed: int = 0
    dropped_source: int = 0
    dropped_new_address: int = 0
    dropped_overflow: int = 0
    dropped_global: int = 0
    allowed_returning: int = 0
    dropped_untrusted: int = 0
    dropped_replayed_ping: int = 0
    dropped_bad_signature: int = 0
    dropped_pending: int = 0
    evicted_pending: int = 0
    dropped_amplification: int = 0
    evicted_sources: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


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
            tokens = self.tokens + (now - self.last) * self.rate
            # not min(): a builtin call is a measurable part of a flood datagram's cost
            self.tokens = tokens if tokens < self.burst else self.burst
            self.last = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def is_full(self, now: float) -> bool:
        """Whether the bucket would be back at its burst by ``now`` (then it holds no information)."""
        return self.tokens + max(now - self.last, 0.0) * self.rate >= self.burst


class _BucketTable:
    """Buckets by key, at most ``limit``; beyond that, new keys share one overflow bucket."""

    def __init__(self, rate: float, burst: float, limit: int) -> None:
        self.rate = rate
        self.burst = burst
        self.limit = limit
        self.entries: OrderedDict[object, TokenBucket] = OrderedDict()
        self.overflow: TokenBucket | None = None

    def get(self, key: object) -> TokenBucket | None:
        bucket = self.entries.get(key)
        if bucket is not None:
            self.entries.move_to_end(key)
        return bucket

    def create(self, key: object, now: float) -> tuple[TokenBucket, bool]:
        """A bucket for a new key; ``(bucket, evicted)``. The overflow bucket when the table is full."""
        evicted = False
        if len(self.entries) >= self.limit:
            oldest_key, oldest = next(iter(self.entries.items()))
            if not oldest.is_full(now):
                # Every entry still remembers a recent burst: evicting one would hand its owner a
                # fresh bucket. Newcomers share one instead.
                if self.overflow is None:
                    self.overflow = TokenBucket.full(self.rate, self.burst, now)
                return self.overflow, False
            del self.entries[oldest_key]
            evicted = True
        bucket = TokenBucket.full(self.rate, self.burst, now)
        self.entries[key] = bucket
        return bucket, evicted


@dataclass
class _Budget:
    received: int = 0
    sent: int = 0
    last: float = 0.0


@dataclass
class HandshakeGuard:
    """Per-address and global limits for handshake processing (see the module docstring)."""

    config: GuardConfig = field(default_factory=GuardConfig)
    counters: GuardCounters = field(default_factory=GuardCounters)

    def __post_init__(self) -> None:
        cfg = self.config
        self._sources = _BucketTable(cfg.per_source_rate, cfg.per_source_burst, cfg.max_sources)
        self._hosts = _BucketTable(cfg.per_host_new_rate, cfg.per_host_new_burst, cfg.max_sources)
        self._global: TokenBucket | None = None
        # hosts that completed a handshake, least recently seen first, each with its reserve
        self._returning: OrderedDict[str, TokenBucket] = OrderedDict()
        self._budgets: OrderedDict[SocketAddr, _Budget] = OrderedDict()
        self._pings: OrderedDict[bytes, tuple[SocketAddr, float]] = OrderedDict()
        # verified PING datagram -> its ephemeral key: a replay is byte-identical, found without a parse
        self._ping_bytes: dict[bytes, bytes] = {}
        self._pending: OrderedDict[SocketAddr, None] = OrderedDict()
        self._pending_hosts: dict[str, int] = {}
        #: datagrams whose signature failed (read directly by the node's receive path: one lookup)
        self.bad_signatures: OrderedDict[bytes, None] = OrderedDict()

    # --- rate limits -----------------------------------------------------------------------------

    def allow_source(self, addr: SocketAddr, now: float, *, known: bool = False) -> bool:
        """Per-address limit; call first, for every handshake message that may need a signature check.

        ``known``: the node has a session with or started a handshake to ``addr`` (no new-address charge).
        """
        sources = self._sources
        bucket = sources.get(addr)
        if bucket is None:
            if not known:
                host_bucket = self._hosts.get(addr[0])
                if host_bucket is None:
                    host_bucket, _ = self._hosts.create(addr[0], now)
                if not host_bucket.take(now):
                    self.counters.dropped_new_address += 1
                    return False
            bucket, evicted = sources.create(addr, now)
            if evicted:
                self.counters.evicted_sources += 1
        if bucket.take(now):
            return True
        if bucket is sources.overflow:
            self.counters.dropped_overflow += 1
        else:
            self.counters.dropped_source += 1
        return False

    def allow_global(self, now: float, host: str | None = None) -> bool:
        """Global limit; call right before the signature check. When it is spent, a ``host`` that
        completed a handshake before (:meth:`remember_peer`) may still pass on its own reserve."""
        if self._global is None:
            self._global = TokenBucket.full(self.config.global_rate, self.config.global_burst, now)
        if self._global.take(now):
            self.counters.allowed += 1
            return True
        reserve = self._returning.get(host) if host is not None else None
        if reserve is not None and reserve.take(now):
            self.counters.allowed_returning += 1
            return True
        self.counters.dropped_global += 1
        return False

    def remember_peer(self, host: str, now: float) -> None:
        """``host`` completed a handshake: its signature verified and it answered from that address.
        At most ``max_sources`` hosts are remembered, the least recently connected forgotten first."""
        returning = self._returning
        if host in returning:
            returning.move_to_end(host)
            return
        cfg = self.config
        returning[host] = TokenBucket.full(cfg.returning_rate, cfg.returning_burst, now)
        if len(returning) > cfg.max_sources:
            returning.popitem(last=False)

    def note_untrusted(self) -> None:
        """A handshake message whose key hash matches no trusted key (dropped by the caller)."""
        self.counters.dropped_untrusted += 1

    @property
    def tracked_sources(self) -> int:
        return len(self._sources.entries)

    # --- datagrams that failed their signature check --------------------------------------------

    def record_bad_signature(self, datagram: bytes) -> None:
        """A handshake datagram failed its signature check: its copies are dropped unchecked."""
        bad = self.bad_signatures
        bad[datagram] = None
        if len(bad) > self.config.max_sources:
            bad.popitem(last=False)

    def note_bad_signature(self) -> None:
        """A copy of a datagram in :attr:`bad_signatures` arrived (dropped by the caller)."""
        self.counters.dropped_bad_signature += 1

    def keys_changed(self) -> None:
        """The trusted keys changed: bytes that failed with the old ones are checked again."""
        self.bad_signatures.clear()

    # --- replayed PINGs --------------------------------------------------------------------------

    def ping_allowed(self, ephemeral_key: bytes, addr: SocketAddr, now: float) -> bool:
        """Whether a PING with this ephemeral key may be answered from ``addr`` (before verifying it)."""
        seen = self._pings.get(ephemeral_key)
        if seen is None or seen[0] == addr or now - seen[1] > self.config.replay_ttl:
            return True
        self.counters.dropped_replayed_ping += 1
        return False

    def verified_ping_key(self, datagram: bytes) -> bytes | None:
        """The ephemeral key of a PING datagram verified before (byte for byte), without parsing it."""
        return self._ping_bytes.get(datagram)

    def record_ping(self, ephemeral_key: bytes, addr: SocketAddr, now: float, datagram: bytes = b"") -> None:
        """A PING verified: bind its ephemeral key to ``addr`` (first binding wins until it expires)."""
        seen = self._pings.get(ephemeral_key)
        if seen is not None and seen[0] != addr and now - seen[1] <= self.config.replay_ttl:
            return
        self._pings[ephemeral_key] = (addr, now)
        self._pings.move_to_end(ephemeral_key)
        if datagram:
            self._ping_bytes[datagram] = ephemeral_key
        while len(self._pings) > self.config.max_sources:
            self._pings.popitem(last=False)
        if len(self._ping_bytes) > self.config.max_sources:
            # rare (as many verified PINGs as sources): keep only those whose binding is still held
            self._ping_bytes = {d: k for d, k in self._ping_bytes.items() if k in self._pings}

    # --- pending handshakes started by peers -------------------------------------------------------

    def pending_allowed(self, addr: SocketAddr) -> bool:
        """Whether ``addr`` may start one more handshake (per-host bound; the total evicts instead)."""
        if addr in self._pending or self._pending_hosts.get(addr[0], 0) < self.config.max_pending_per_host:
            return True
        self.counters.dropped_pending += 1
        return False

    def pending_started(self, addr: SocketAddr) -> SocketAddr | None:
        """Track a handshake ``addr`` started; returns the oldest one to drop when over ``max_pending``."""
        if addr in self._pending:
            return None
        evict = None
        if len(self._pending) >= self.config.max_pending:
            evict = next(iter(self._pending))
            self.pending_ended(evict)
            self.counters.evicted_pending += 1
        self._pending[addr] = None
        self._pending_hosts[addr[0]] = self._pending_hosts.get(addr[0], 0) + 1
        return evict

    def pending_ended(self, addr: SocketAddr) -> None:
        if self._pending.pop(addr, 0) is None:
            left = self._pending_hosts[addr[0]] - 1
            if left:
                self._pending_hosts[addr[0]] = left
            else:
                del self._pending_hosts[addr[0]]

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # --- amplification budget --------------------------------------------------------------------

    def note_received(self, addr: SocketAddr, size: int, now: float) -> None:
        """Count bytes received from an address that has no established session."""
        if not self.config.amplification_budget:
            return
        budget = self._budget(addr, now)
        budget.received += size

    def may_send(self, addr: SocketAddr, size: int, now: float) -> bool:
        """Whether a reply of ``size`` bytes to a not yet authenticated address fits the budget."""
        if not self.config.amplification_budget:
            return True
        budget = self._budget(addr, now)
        if budget.sent + size <= budget.received:
            budget.sent += size
            return True
        self.counters.dropped_amplification += 1
        return False

    def forget(self, addr: SocketAddr) -> None:
        """The address completed a handshake (or we contacted it): no budget needed any more."""
        self._budgets.pop(addr, None)

    def _budget(self, addr: SocketAddr, now: float) -> _Budget:
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
        """Counters plus table sizes, for ``Node.status()``."""
        out = self.counters.as_dict()
        out["tracked_sources"] = len(self._sources.entries)
        out["tracked_pings"] = len(self._pings)
        out["tracked_bad_signatures"] = len(self.bad_signatures)
        out["pending_inbound"] = len(self._pending)
        return out
