"""Virtual clock, event queue and virtual UDP network for multi-node simulations.

Everything here is deterministic: time only moves when the :class:`Scheduler` runs an event, and all
randomness (loss, delay, duplication) comes from one seeded ``random.Random``. There are no threads and
no wall clock, so a simulated day of traffic runs in seconds and every run is reproducible.

The network model is deliberately small:

* An :class:`Endpoint` is one UDP socket address. Addresses are canonical ``(host, port)`` tuples: IPv4
  is always written in the IPv4-mapped form ``("::ffff:10.0.0.1", 3210)`` like inside the core, IPv6 as
  Python's compressed text.
* Endpoints live either on the public "internet" or behind a :class:`NatBox`. Endpoints behind the same
  NAT reach each other directly (a LAN); everything else goes through the NAT's translation.
* A datagram takes a path between two endpoints whose :class:`LinkParams` give loss, fixed + random
  delay, reordering and duplication. Partitions and per-datagram filters drop datagrams on purpose.
* Every datagram is recorded in :attr:`Network.trace` with its fate, so tests can check *which* path
  packets took (for example that two NATed nodes talk directly, not through a relay).
"""

from __future__ import annotations

import enum
import functools
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vpncloud.core.types import SocketAddr, mapped

__all__ = [
    "Datagram",
    "DropNth",
    "Endpoint",
    "LinkParams",
    "NatBox",
    "NatKind",
    "Network",
    "Scheduler",
    "TraceEntry",
    "canon",
    "init_stage",
]


@functools.lru_cache(maxsize=8192)
def _canon(host: str, port: int) -> SocketAddr:
    return mapped((host, port))


def canon(addr: SocketAddr) -> SocketAddr:
    """Canonical form of a socket address: IPv4 mapped, IPv6 compressed (the core's convention).

    Cached: parsing addresses with ``ipaddress`` on every simulated datagram dominated the run time.
    """
    return _canon(addr[0], addr[1])


# --- clock and event queue ---------------------------------------------------------------------


class Timer:
    """Handle of a scheduled callback; :meth:`cancel` makes the scheduler skip it."""

    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run this callback (it stays in the heap and is skipped when popped)."""
        self.cancelled = True


class Scheduler:
    """A virtual clock plus a priority queue of callbacks.

    Events at the same time run in the order they were scheduled (a sequence number breaks ties), which
    keeps runs deterministic regardless of heap internals.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = float(start)
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self.events_run = 0

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` at virtual time ``when`` (clamped to now: the past cannot be scheduled)."""
        timer = Timer(max(float(when), self.now), fn, args)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        return timer

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` ``delay`` seconds from now."""
        return self.at(self.now + delay, fn, *args)

    def next_time(self) -> float | None:
        """Time of the next pending (not cancelled) event, or None if the queue is empty."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def step(self) -> bool:
        """Advance the clock to the next event and run it; False if nothing is pending."""
        while self._heap:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self.now = when
            self.events_run += 1
            timer.fn(*timer.args)
            return True
        return False

    def run_until(self, deadline: float) -> None:
        """Run every event scheduled up to and including ``deadline``; the clock ends at ``deadline``."""
        heap = self._heap
        pop = heapq.heappop
        # Inlined step(): this loop runs hundreds of thousands of times in a simulated day.
        while heap and heap[0][0] <= deadline:
            when, _, timer = pop(heap)
            if timer.cancelled:
                continue
            self.now = when
            self.events_run += 1
            timer.fn(*timer.args)
        self.now = max(self.now, float(deadline))

    def __len__(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)


# --- datagrams, links, filters -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkParams:
    """Properties of the path between two endpoints (one direction).

    ``delay`` is the fixed one-way latency, ``jitter`` adds a uniform random ``[0, jitter)`` on top (which
    already reorders datagrams that are sent closer together than the jitter). ``reorder`` is the
    probability that a datagram is additionally held back by ``reorder_delay``; ``duplicate`` the
    probability that a second copy (with its own delay) is delivered.
    """

    drop: float = 0.0
    delay: float = 0.005
    jitter: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.5


@dataclass(frozen=True, slots=True)
class Datagram:
    """One UDP datagram as sent.

    ``sender`` is the sending endpoint's own address (inside its NAT, if any), ``src`` the source address
    the receiver will see (after NAT translation), ``dst`` the address the sender wrote on it.
    """

    seq: int
    sent_at: float
    sender: SocketAddr
    src: SocketAddr
    dst: SocketAddr
    data: bytes

    @property
    def stage(self) -> int | None:
        """Handshake stage (1 PING, 2 PONG, 3 PENG) or None for non-init datagrams."""
        return init_stage(self.data)


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """What happened to a datagram: ``status`` is ``delivered`` or ``dropped:<reason>``."""

    time: float
    datagram: Datagram
    status: str
    receiver: SocketAddr | None = None


def init_stage(data: bytes) -> int | None:
    """Stage of a handshake message as the original writes it (spec 6.3: STAGE field at offset 9..12).

    The original always writes STAGE first, so looking at fixed offsets is enough for test filters.
    """
    if len(data) >= 13 and data[0] == 0xFF and data[9:12] == b"\x01\x00\x01":
        return data[12]
    return None


class DropNth:
    """A datagram filter that drops the ``n``-th (1-based) datagram matching ``pred``, ``count`` times.

    Example: ``net.add_filter(DropNth(lambda d: d.stage == 2))`` loses exactly the first PONG. The
    dropped datagrams are kept in :attr:`dropped` so tests can assert the filter actually fired.
    """

    def __init__(self, pred: Callable[[Datagram], bool], n: int = 1, count: int = 1) -> None:
        self.pred = pred
        self.n = n
        self.count = count
        self.seen = 0
        self.dropped: list[Datagram] = []

    def __call__(self, dg: Datagram) -> bool:
        if not self.pred(dg):
            return False
        self.seen += 1
        if self.n <= self.seen < self.n + self.count:
            self.dropped.append(dg)
            return True
        return False


Filter = Callable[[Datagram], bool]
Handler = Callable[[bytes, SocketAddr, float], None]


# --- NAT ---------------------------------------------------------------------------------------------


class NatKind(enum.Enum):
    """NAT behaviours (RFC 4787 terms).

    ``FULL_CONE``: endpoint-independent mapping and filtering. ``ADDRESS_RESTRICTED``: endpoint-independent
    mapping, inbound only from hosts the inside host sent to. ``PORT_RESTRICTED``: the same, but per
    host *and* port (spec 22.9's NAT simulation). ``SYMMETRIC``: a new external port per destination,
    inbound only from that destination.
    """

    FULL_CONE = "full-cone"
    ADDRESS_RESTRICTED = "address-restricted"
    PORT_RESTRICTED = "port-restricted"
    SYMMETRIC = "symmetric"


@dataclass
class _Mapping:
    inside: SocketAddr
    ext_port: int
    last_out: float
    # remote address (or host, for address-restricted) -> last time the inside host sent to it
    permits: dict[Any, float] = field(default_factory=dict)


class NatBox:
    """A NAT in front of one or more endpoints.

    A mapping (inside address → external port) is created by the first outbound datagram and forgotten
    after ``timeout`` seconds without outbound traffic; a later datagram then gets a *new* external
    port. Inbound datagrams are let through only if the kind's filter allows them: the remote must have
    been sent to within ``timeout`` seconds (except full cone).

    With ``preserve_port`` the external port equals the inside port when it is free; with a
    ``public_host`` equal to the inside host this models a stateful firewall without translation, which
    is the NAT of spec 22.9's node simulations ("inbound only from addresses sent to within 300 s").
    """

    def __init__(
        self,
        public_host: str,
        kind: NatKind = NatKind.PORT_RESTRICTED,
        timeout: float = 300.0,
        first_port: int = 40000,
        preserve_port: bool = False,
    ) -> None:
        self.public_host = canon((public_host, 0))[0]
        self.kind = kind
        self.timeout = float(timeout)
        self.preserve_port = preserve_port
        self._next_port = first_port
        self._by_key: dict[Any, _Mapping] = {}
        self._by_port: dict[int, _Mapping] = {}
        # Static port forwards (ext port -> inside) and the remotes that came in through them
        # ((inside, remote) -> ext port), so replies leave from the forwarded port (conntrack).
        self._forwards: dict[int, SocketAddr] = {}
        self._forward_conns: dict[tuple[SocketAddr, SocketAddr], int] = {}

    def forward(self, ext_port: int, inside: SocketAddr) -> None:
        """Add a static port forward (DNAT): datagrams from anyone to ``ext_port`` reach ``inside``,
        and its replies to those senders leave from ``ext_port``, whatever the NAT kind."""
        self._forwards[ext_port] = canon(inside)

    def _key(self, inside: SocketAddr, dst: SocketAddr) -> Any:
        return (inside, dst) if self.kind is NatKind.SYMMETRIC else inside

    def _permit_key(self, remote: SocketAddr) -> Any:
        return remote[0] if self.kind is NatKind.ADDRESS_RESTRICTED else remote

    def _expire(self, now: float) -> None:
        for key, m in list(self._by_key.items()):
            if now - m.last_out > self.timeout:
                del self._by_key[key]
                del self._by_port[m.ext_port]

    def outbound(self, inside: SocketAddr, dst: SocketAddr, now: float) -> SocketAddr:
        """Translate the source of a datagram leaving the NAT; creates/refreshes the mapping."""
        self._expire(now)
        if self._forward_conns:
            port = self._forward_conns.get((inside, dst))
            if port is not None:
                return (self.public_host, port)
        key = self._key(inside, dst)
        m = self._by_key.get(key)
        if m is None:
            if self.preserve_port and inside[1] not in self._by_port:
                port = inside[1]
            else:
                while self._next_port in self._by_port:
                    self._next_port += 1
                port = self._next_port
                self._next_port += 1
            m = _Mapping(inside, port, now)
            self._by_key[key] = m
            self._by_port[m.ext_port] = m
        m.last_out = now
        m.permits[self._permit_key(dst)] = now
        return (self.public_host, m.ext_port)

    def inbound(self, src: SocketAddr, ext_port: int, now: float) -> SocketAddr | None:
        """Inside address for a datagram from ``src`` to our ``ext_port``, or None if filtered."""
        self._expire(now)
        forwarded = self._forwards.get(ext_port)
        if forwarded is not None:
            self._forward_conns[(forwarded, src)] = ext_port
            return forwarded
        m = self._by_port.get(ext_port)
        if m is None:
            return None
        if self.kind is NatKind.FULL_CONE:
            return m.inside
        sent = m.permits.get(self._permit_key(src))
        if sent is None or now - sent > self.timeout:
            return None
        return m.inside

    def mappings(self) -> list[tuple[SocketAddr, int]]:
        """Current (inside address, external port) pairs, for assertions."""
        return [(m.inside, m.ext_port) for m in self._by_key.values()]


# --- endpoints and the network ---------------------------------------------------------------------


class Endpoint:
    """One UDP socket on the virtual network. Created by :meth:`Network.attach`."""

    def __init__(self, net: Network, addr: SocketAddr, handler: Handler, nat: NatBox | None) -> None:
        self.net = net
        self.addr = addr
        self.handler = handler
        self.nat = nat
        self.sent = 0
        self.received = 0

    def send(self, data: bytes, dst: SocketAddr) -> None:
        """Send one datagram to ``dst`` (any form; mapped internally)."""
        self.net.send(self, data, dst)

    def __repr__(self) -> str:
        return f"Endpoint({self.addr!r}, nat={self.nat.public_host if self.nat else None})"


class Network:
    """The virtual network: endpoints, per-path link properties, partitions, filters and NATs."""

    def __init__(
        self,
        scheduler: Scheduler,
        rng: random.Random | None = None,
        default: LinkParams | None = None,
        record: bool = True,
    ) -> None:
        self.sched = scheduler
        self.rng = rng if rng is not None else random.Random(0)
        self.default = default if default is not None else LinkParams()
        self.record = record
        self.endpoints: dict[SocketAddr, Endpoint] = {}
        self.nats: dict[str, NatBox] = {}
        self.links: dict[tuple[SocketAddr, SocketAddr], LinkParams] = {}
        self.filters: list[Filter] = []
        self.trace: list[TraceEntry] = []
        self.stats: Counter[str] = Counter()
        self._groups: dict[SocketAddr, int] | None = None
        self._seq = itertools.count()

    # -- topology ----------------------------------------------------------------------------------

    def attach(self, addr: SocketAddr, handler: Handler, nat: NatBox | None = None) -> Endpoint:
        """Add an endpoint; ``handler(data, src, now)`` receives its datagrams."""
        addr = canon(addr)
        if addr in self.endpoints:
            raise ValueError(f"address {addr} already attached")
        if nat is not None:
            self.nats.setdefault(nat.public_host, nat)
        ep = Endpoint(self, addr, handler, nat)
        self.endpoints[addr] = ep
        return ep

    def detach(self, addr: SocketAddr) -> None:
        """Remove an endpoint (a crashed node); datagrams to it are dropped as unroutable."""
        self.endpoints.pop(canon(addr), None)

    def set_link(self, a: SocketAddr, b: SocketAddr, params: LinkParams, both_ways: bool = True) -> None:
        """Set the path properties from endpoint ``a`` to endpoint ``b`` (and back)."""
        a, b = canon(a), canon(b)
        self.links[(a, b)] = params
        if both_ways:
            self.links[(b, a)] = params

    def link(self, a: SocketAddr, b: SocketAddr) -> LinkParams:
        """Effective path properties from endpoint ``a`` to endpoint ``b``."""
        return self.links.get((a, b), self.default)

    def add_filter(self, f: Filter) -> Filter:
        """Add a datagram filter; it returns True to drop the datagram. Returns ``f`` for later removal."""
        self.filters.append(f)
        return f

    def remove_filter(self, f: Filter) -> None:
        self.filters.remove(f)

    def partition(self, *groups: Iterable[SocketAddr], at: float | None = None) -> None:
        """Cut the network into groups of endpoint addresses (now, or at virtual time ``at``).

        Endpoints in different groups cannot exchange datagrams (also those already in flight);
        endpoints not named in any group form one more group together.
        """
        table = {canon(a): i for i, g in enumerate(groups) for a in g}
        if at is None:
            self._groups = table
        else:
            self.sched.at(at, self._set_groups, table)

    def heal(self, at: float | None = None) -> None:
        """Remove the partition (now, or at virtual time ``at``)."""
        if at is None:
            self._groups = None
        else:
            self.sched.at(at, self._set_groups, None)

    def _set_groups(self, table: dict[SocketAddr, int] | None) -> None:
        self._groups = table

    def partitioned(self, a: SocketAddr, b: SocketAddr) -> bool:
        """True if endpoints ``a`` and ``b`` are on different sides of the current partition."""
        if self._groups is None:
            return False
        return self._groups.get(a, -1) != self._groups.get(b, -1)

    # -- datagram path ------------------------------------------------------------------------------

    def _note(self, dg: Datagram, status: str, receiver: SocketAddr | None = None) -> None:
        self.stats[status] += 1
        if self.record:
            self.trace.append(TraceEntry(self.sched.now, dg, status, receiver))

    def _resolve(self, dst: SocketAddr, sender: Endpoint) -> tuple[Endpoint | None, NatBox | None]:
        """Endpoint a datagram to ``dst`` is headed for: (direct endpoint, None) or (None, dst's NAT)."""
        ep = self.endpoints.get(dst)
        if ep is not None and (ep.nat is None or ep.nat is sender.nat):
            return ep, None
        nat = self.nats.get(dst[0])
        return None, nat

    def send(self, sender: Endpoint, data: bytes, dst: SocketAddr) -> None:
        """Put a datagram on the wire (normally called through :meth:`Endpoint.send`)."""
        now = self.sched.now
        dst = canon(dst)
        sender.sent += 1
        target, dst_nat = self._resolve(dst, sender)
        src = sender.addr
        if sender.nat is not None and (target is None or target.nat is not sender.nat):
            # Leaving the LAN: the sender's NAT rewrites the source (and learns the permission).
            src = sender.nat.outbound(sender.addr, dst, now)
        dg = Datagram(next(self._seq), now, sender.addr, src, dst, bytes(data))
        for f in self.filters:
            if f(dg):
                self._note(dg, "dropped:filter")
                return
        if target is None and dst_nat is None:
            self._note(dg, "dropped:unroutable")
            return
        # The path's properties are those towards the final endpoint if it is known now.
        final = target.addr if target is not None else None
        if final is None and dst_nat is not None:
            for m_inside, port in dst_nat.mappings():
                if port == dst[1]:
                    final = m_inside
        params = self.link(sender.addr, final) if final is not None else self.default
        if final is not None and self.partitioned(sender.addr, final):
            self._note(dg, "dropped:partition")
            return
        if params.drop and self.rng.random() < params.drop:
            self._note(dg, "dropped:loss")
            return
        copies = 2 if params.duplicate and self.rng.random() < params.duplicate else 1
        for _ in range(copies):
            delay = params.delay
            if params.jitter:
                delay += self.rng.random() * params.jitter
            if params.reorder and self.rng.random() < params.reorder:
                delay += params.reorder_delay
            self.sched.after(delay, self._arrive, dg, target, dst_nat)

    def _arrive(self, dg: Datagram, target: Endpoint | None, dst_nat: NatBox | None) -> None:
        now = self.sched.now
        if target is None:
            assert dst_nat is not None
            inside = dst_nat.inbound(dg.src, dg.dst[1], now)
            if inside is None:
                self._note(dg, "dropped:nat")
                return
            target = self.endpoints.get(inside)
        elif self.endpoints.get(target.addr) is not target:
            target = None
        if target is None:
            self._note(dg, "dropped:unroutable")
            return
        if self.partitioned(dg.sender, target.addr):
            self._note(dg, "dropped:partition")
            return
        target.received += 1
        self._note(dg, "delivered", target.addr)
        target.handler(dg.data, dg.src, now)

    # -- queries ------------------------------------------------------------------------------------

    def delivered(
        self, sender: SocketAddr | None = None, receiver: SocketAddr | None = None
    ) -> list[TraceEntry]:
        """Trace entries of delivered datagrams, optionally filtered by sender/receiver endpoint."""
        s = canon(sender) if sender is not None else None
        r = canon(receiver) if receiver is not None else None
        return [
            e
            for e in self.trace
            if e.status == "delivered"
            and (s is None or e.datagram.sender == s)
            and (r is None or e.receiver == r)
        ]
