"""Relays between two nodes of ours that cannot reach each other (issue 22). See docs/relays.md.

The end-to-end session of the two ends is the ordinary one: its datagrams (handshake included) travel
wrapped in session messages of each end's session with the relay. In the node a relayed peer is keyed
by a synthetic address ``("100::<n>", n)`` (the IPv6 discard prefix), so the rest of the core does not
know it is relayed. The :class:`RelayManager` does the wrapping, the forwarding (on the relay), the
choice of a relay and the move back to a direct session.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vpncloud.fastpath.rows import Train
from vpncloud.fastpath.superpacket import FEATURE_TCP, FEATURE_UDP

from .errors import VpnCloudError
from .types import NODE_ID_BYTES, SocketAddr, format_sockaddr, nice

if TYPE_CHECKING:  # pragma: no cover - typing only; node.py imports this module
    from .messages import NodeInfo
    from .node import Node, Peer

log = logging.getLogger("vpncloud.relay")

FEATURE_RELAY_END = 0x04
FEATURE_RELAY_OFFER = 0x08
MSG_RELAY_TO = 0x52
MSG_RELAY_FROM = 0x72
#: relay -> end: [16 bytes: node id of the other end][1 byte: reason]; the relay cannot forward to it.
MSG_RELAY_REFUSED = 0x4E
REFUSED_NO_ROUTE = 1
REFUSED_NOT_CAPABLE = 2
_REFUSED_NAMES = {REFUSED_NO_ROUTE: "has no session with", REFUSED_NOT_CAPABLE: "cannot relay to"}
#: A relay answers a refused pair at most this often (the end's handshake retransmits).
REFUSAL_INTERVAL = 1.0
#: Refusal answers remembered (for their rate limit).
MAX_REFUSALS = 256
#: Bytes a relayed datagram grows by: the relay session's header, type and tag (25) and a node id.
RELAY_OVERHEAD = 25 + NODE_ID_BYTES
#: Hosts of synthetic addresses: ``100::<n hex>``, one per address so that the handshake guard's
#: per-source buckets stay per relayed peer.
SYNTHETIC_PREFIX = "100::"
#: Synthetic addresses in use at most (one per relay and remote node).
MAX_SYNTHETIC = 1024
#: Node ids we remember wanting from relays' peer lists.
MAX_WANTED = 1024
#: Longest pause between relayed attempts to a node that does not answer.
MAX_RETRY = 3600.0

DROP_REASONS = (
    "not_offered",
    "not_capable",
    "no_route",
    "chained",
    "pair_cap",
    "total_cap",
    "pairs_full",
    "malformed",
    "unknown_relay",
    "refusals_sent",
    "refusals_received",
)


def is_synthetic(addr: SocketAddr) -> bool:
    return addr[0].startswith(SYNTHETIC_PREFIX)


@dataclass
class RelayConfig:
    """``offer``: forward for our peers; ``use``: reach peers through relays. Rates in bytes/s."""

    offer: bool = False
    use: bool = False
    pair_rate: float = 1_000_000.0
    total_rate: float = 8_000_000.0
    max_pairs: int = 64
    pair_idle: float = 60.0
    direct_grace: float = 20.0
    direct_retry: float = 60.0
    retry: float = 30.0
    #: The mesh plan knows direct connections to some peers fail (a symmetric NAT): go through a
    #: relay at once instead of after ``direct_grace``; direct is still retried every ``direct_retry``.
    #: True: for every peer; a set of node ids: for those only.
    at_once: bool | frozenset[bytes] = False

    def relay_at_once(self, node_id: bytes) -> bool:
        return self.at_once is True or (not isinstance(self.at_once, bool) and node_id in self.at_once)

    @property
    def features(self) -> int:
        bits = FEATURE_RELAY_END if (self.offer or self.use) else 0
        return bits | (FEATURE_RELAY_OFFER if self.offer else 0)


class TokenBucket:
    """Bytes per second with one second of burst (never less than 64 KB, a super-packet)."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(rate, 65536.0)
        self.tokens = self.burst
        self.last = now

    def take(self, n: int, now: float) -> bool:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


@dataclass
class PairState:
    bucket: TokenBucket
    last_used: float
    packets: int = 0
    bytes: int = 0


@dataclass
class Wanted:
    """A node a relay lists that we have no session with."""

    since: float
    next_try: float = 0.0
    tries: int = 0
    relays: set[bytes] = field(default_factory=set)
    #: relay node id -> time until which we do not ask it again (it said it cannot reach the node)
    refused: dict[bytes, float] = field(default_factory=dict)
    refusals: int = 0
    #: Start the next relayed handshake whichever end has the lower id: after a refusal the other
    #: end may still believe in a session through the relay that lost us (crossing PINGs are
    #: settled by the handshake itself, spec 6).
    force: bool = False


class RelayManager:
    """Relay state of one node (both roles). Created by :meth:`Node.enable_relays`."""

    def __init__(self, node: Node, config: RelayConfig, now: float) -> None:
        self.node = node
        self.config = config
        self._total = TokenBucket(config.total_rate, now)
        self._pairs: OrderedDict[tuple[bytes, bytes], PairState] = OrderedDict()
        # n -> (relay node id, remote node id) and back
        self._synthetic: dict[int, tuple[bytes, bytes]] = {}
        self._by_ends: dict[tuple[bytes, bytes], int] = {}
        self._next_index = 1
        self._wanted: dict[bytes, Wanted] = {}
        self._next_direct: dict[SocketAddr, float] = {}
        self.counters: dict[str, int] = {"forwarded_packets": 0, "forwarded_bytes": 0}
        self.counters.update(dict.fromkeys(DROP_REASONS, 0))
        self.moved_direct = 0
        #: node ids of our ends already announced to the other ends (see _announce_new_end)
        self._ends: set[bytes] = set()
        self._refusals: OrderedDict[tuple[bytes, bytes], float] = OrderedDict()
        #: node id -> time until which no relay can reach it (for status)
        self.unreachable: dict[bytes, float] = {}

    def reconfigure(self, config: RelayConfig) -> None:
        """New limits apply from now on; pair states start afresh under them."""
        self.config = config
        self._total = TokenBucket(config.total_rate, self._total.last)
        self._pairs.clear()

    @property
    def active(self) -> bool:
        return bool(self._synthetic)

    # -- synthetic addresses ---------------------------------------------------------------------

    def synthetic_for(self, relay_id: bytes, remote_id: bytes) -> SocketAddr | None:
        n = self._by_ends.get((relay_id, remote_id))
        if n is None:
            if len(self._synthetic) >= MAX_SYNTHETIC:
                self._forget_unused()
                if len(self._synthetic) >= MAX_SYNTHETIC:
                    return None
            while self._next_index in self._synthetic or self._next_index == 0:
                self._next_index = (self._next_index + 1) & 0xFFFF
            n = self._next_index
            self._next_index = (n + 1) & 0xFFFF
            self._synthetic[n] = (relay_id, remote_id)
            self._by_ends[(relay_id, remote_id)] = n
        return _synthetic(n)

    def ends_of(self, addr: SocketAddr) -> tuple[bytes, bytes] | None:
        """(relay node id, remote node id) of a synthetic address."""
        return self._synthetic.get(addr[1]) if is_synthetic(addr) else None

    def relay_of(self, addr: SocketAddr) -> tuple[bytes, SocketAddr | None] | None:
        """Node id and underlay address (None if its session is gone) of the relay behind a
        synthetic address; None for a direct peer. For hooks: the synthetic address means nothing
        outside this node."""
        ends = self.ends_of(addr)
        if ends is None:
            return None
        found = self._peer_by_id(ends[0])
        return ends[0], found[0] if found is not None else None

    def _forget_unused(self) -> None:
        node = self.node
        for n, ends in list(self._synthetic.items()):
            addr = _synthetic(n)
            if addr not in node.peers and addr not in node.pending:
                del self._synthetic[n]
                del self._by_ends[ends]

    def _peer_by_id(self, node_id: bytes) -> tuple[SocketAddr, Peer] | None:
        # Linear: meshes are small; a per-packet index would need upkeep on every peer change.
        for addr, peer in self.node.peers.items():
            if peer.node_id == node_id and not is_synthetic(addr):
                return addr, peer
        return None

    # -- end: outgoing -----------------------------------------------------------------------------

    def wrap_output(
        self, out: Iterable[tuple[bytes | Train, SocketAddr]]
    ) -> list[tuple[bytes | Train, SocketAddr]]:
        """Replace datagrams to synthetic addresses by RELAY_TO messages to their relay."""
        result: list[tuple[bytes | Train, SocketAddr]] = []
        for data, addr in out:
            if not is_synthetic(addr):
                result.append((data, addr))
                continue
            ends = self._synthetic.get(addr[1])
            found = self._peer_by_id(ends[0]) if ends is not None else None
            if ends is None or found is None:
                self.counters["unknown_relay"] += 1
                continue
            relay_addr, relay = found
            header = ends[1]
            for d in data.datagrams() if isinstance(data, Train) else (data,):
                try:
                    result.append((relay.crypto.send_message(MSG_RELAY_TO, header + d), relay_addr))
                except VpnCloudError as err:
                    log.error("Cannot send through relay %s: %s", _fmt(relay_addr), err)
        return result

    # -- both roles: incoming ----------------------------------------------------------------------

    def on_message(self, peer: Peer, addr: SocketAddr, msg_type: int, payload: bytes, now: float) -> None:
        if is_synthetic(addr):
            self.counters["chained"] += 1
            return
        if len(payload) <= NODE_ID_BYTES:
            self.counters["malformed"] += 1
            return
        other_id = bytes(payload[:NODE_ID_BYTES])
        inner = bytes(payload[NODE_ID_BYTES:])
        if msg_type == MSG_RELAY_REFUSED:
            self._refused(peer, other_id, inner, now)
        elif msg_type == MSG_RELAY_TO:
            self._forward(peer, addr, other_id, inner, now)
        else:
            self._deliver(peer, other_id, inner, now)

    def _forward(self, src: Peer, src_addr: SocketAddr, dst_id: bytes, inner: bytes, now: float) -> None:
        cfg = self.config
        if not cfg.offer:
            self.counters["not_offered"] += 1
            return
        found = self._peer_by_id(dst_id)
        if found is None:
            self.counters["no_route"] += 1
            self._refuse(src, src_addr, dst_id, REFUSED_NO_ROUTE, now)
            return
        dst_addr, dst = found
        # Only to a node that said it understands relay messages: never to an original node.
        if not (dst.features & FEATURE_RELAY_END and src.features & FEATURE_RELAY_END):
            self.counters["not_capable"] += 1
            self._refuse(src, src_addr, dst_id, REFUSED_NOT_CAPABLE, now)
            return
        key = (src.node_id, dst_id) if src.node_id < dst_id else (dst_id, src.node_id)
        pair = self._pairs.get(key)
        if pair is None:
            if len(self._pairs) >= cfg.max_pairs and not self._evict_idle(now):
                self.counters["pairs_full"] += 1
                return
            pair = PairState(TokenBucket(cfg.pair_rate, now), now)
            self._pairs[key] = pair
        else:
            self._pairs.move_to_end(key)
        size = len(inner)
        if not pair.bucket.take(size, now):
            self.counters["pair_cap"] += 1
            return
        if not self._total.take(size, now):
            self.counters["total_cap"] += 1
            return
        pair.last_used = now
        pair.packets += 1
        pair.bytes += size
        try:
            data = dst.crypto.send_message(MSG_RELAY_FROM, src.node_id + inner)
        except VpnCloudError as err:
            log.error("Cannot relay to %s: %s", _fmt(dst_addr), err)
            return
        self.counters["forwarded_packets"] += 1
        self.counters["forwarded_bytes"] += size
        self.node._send(data, dst_addr)

    def _refuse(self, src: Peer, src_addr: SocketAddr, dst_id: bytes, reason: int, now: float) -> None:
        """Tell the end at once that this pair goes nowhere, or its handshake retransmits for the
        whole handshake timeout. Only to an end of ours, and once per second per pair (bounded)."""
        if not src.features & FEATURE_RELAY_END:
            return
        key = (src.node_id, dst_id)
        if now < self._refusals.get(key, -1.0):
            return
        self._refusals[key] = now + REFUSAL_INTERVAL
        self._refusals.move_to_end(key)
        while len(self._refusals) > MAX_REFUSALS:
            self._refusals.popitem(last=False)
        try:
            data = src.crypto.send_message(MSG_RELAY_REFUSED, dst_id + bytes((reason,)))
        except VpnCloudError as err:
            log.error("Cannot answer %s: %s", _fmt(src_addr), err)
            return
        self.counters["refusals_sent"] += 1
        self.node._send(data, src_addr)

    def _refused(self, relay: Peer, target: bytes, rest: bytes, now: float) -> None:
        """The relay cannot reach ``target``: drop what goes through it and try another relay at
        once, or, with none left, call the node unreachable until the backoff ends."""
        self.counters["refusals_received"] += 1
        if not self.config.use or not relay.features & FEATURE_RELAY_OFFER:
            self.counters["not_offered"] += 1  # only a relay may say it cannot reach someone
            return
        if len(rest) != 1 or target == self.node.node_id:
            self.counters["malformed"] += 1
            return
        relay_id = relay.node_id
        n = self._by_ends.get((relay_id, target))
        if n is not None:
            addr = _synthetic(n)
            self.node.drop_relayed(addr, self.node.peers.get(addr), announce=True)
        wanted = self._wanted.get(target)
        if wanted is None:
            if len(self._wanted) >= MAX_WANTED:
                return
            wanted = self._wanted[target] = Wanted(since=now)
        if relay_id in wanted.refused and wanted.refused[relay_id] > now:
            return  # already known (an answer per retransmitted datagram)
        wanted.refused[relay_id] = now + min(self.config.retry * 2**wanted.refusals, MAX_RETRY)
        wanted.refusals += 1
        what = _REFUSED_NAMES.get(rest[0], "refused")
        left = sorted(r for r in wanted.relays if wanted.refused.get(r, 0.0) <= now)
        if left:
            wanted.next_try = now
            wanted.force = True
            log.info(
                "Relay %s %s peer %s: trying relay %s",
                relay_id.hex()[:8], what, target.hex()[:8], left[0].hex()[:8],
            )  # fmt: skip
            return
        until = min(wanted.refused.values())
        wanted.next_try = until
        self.unreachable[target] = until
        log.warning(
            "Peer %s is unreachable: relay %s %s it and no other relay can reach it; next try in %.0f s",
            target.hex()[:8], relay_id.hex()[:8], what, until - now,
        )  # fmt: skip

    def _evict_idle(self, now: float) -> bool:
        key, pair = next(iter(self._pairs.items()))
        if now - pair.last_used < self.config.pair_idle:
            return False
        del self._pairs[key]
        return True

    def _deliver(self, relay: Peer, src_id: bytes, inner: bytes, now: float) -> None:
        if not self.config.use or not relay.features & FEATURE_RELAY_OFFER:
            self.counters["not_offered"] += 1
            return
        if src_id == self.node.node_id:
            self.counters["malformed"] += 1
            return
        synthetic = self.synthetic_for(relay.node_id, src_id)
        if synthetic is None:
            self.counters["pairs_full"] += 1
            return
        node = self.node
        node.relayed_from = synthetic
        try:
            node.receive_datagram(inner, synthetic, now)
        finally:
            node.relayed_from = None

    # -- end: choosing relays and moving back ------------------------------------------------------

    def note_node_info(self, peer: Peer, addr: SocketAddr, info: NodeInfo, now: float) -> None:
        """Remember which node ids a relay-offering peer lists (candidates for relaying)."""
        if is_synthetic(addr):
            # No super-packets through a relay: one lost slice of 45 costs the whole 64 KB, and the
            # relay forwards slice by slice anyway (bench/relay.py: several times the throughput).
            peer.features &= ~(FEATURE_TCP | FEATURE_UDP)
        if self.config.offer and not is_synthetic(addr) and peer.features & FEATURE_RELAY_END:
            self._announce_new_end(peer)
        if not self.config.use or is_synthetic(addr) or not peer.features & FEATURE_RELAY_OFFER:
            return
        own = self.node.node_id
        listed = {entry.node_id for entry in info.peers}
        for known, entry_state in self._wanted.items():
            if known not in listed:
                # A relay that stopped listing a node is no candidate for it any more.
                entry_state.relays.discard(peer.node_id)
        for entry in info.peers:
            nid = entry.node_id
            if nid is None or nid == own or nid == peer.node_id:
                continue
            wanted = self._wanted.get(nid)
            if wanted is None:
                if len(self._wanted) >= MAX_WANTED:
                    continue
                wanted = self._wanted[nid] = Wanted(since=now)
            wanted.relays.add(peer.node_id)

    def _announce_new_end(self, peer: Peer) -> None:
        """A relay tells its ends of ours about a new end at once: the ordinary NODE_INFO interval
        (90 s by default) would otherwise delay the first relayed handshake by that much. Original
        nodes get their NODE_INFO on the ordinary schedule only."""
        if peer.node_id in self._ends:
            return
        self._ends.add(peer.node_id)
        self.node._broadcast_node_info(
            only=lambda addr, other: not is_synthetic(addr) and bool(other.features & FEATURE_RELAY_END)
        )

    def tick(self, now: float) -> None:
        node = self.node
        self._ends.intersection_update(p.node_id for p in node.peers.values())
        direct_ids = {p.node_id for a, p in node.peers.items() if not is_synthetic(a)}
        relays = {
            p.node_id
            for a, p in node.peers.items()
            if not is_synthetic(a) and p.features & FEATURE_RELAY_OFFER
        }
        # Relayed sessions: drop when direct works or the relay is gone; else keep trying direct.
        for addr, peer in list(node.peers.items()):
            ends = self.ends_of(addr)
            if ends is None:
                continue
            if peer.node_id in direct_ids:
                direct = next(
                    a for a, p in node.peers.items() if p.node_id == peer.node_id and not is_synthetic(a)
                )
                log.info(
                    "Peer %s now reached directly at %s (was relayed via %s)",
                    peer.node_id.hex()[:8],
                    _fmt(direct),
                    ends[0].hex()[:8],
                )
                self.moved_direct += 1
                node.drop_relayed(addr, peer, announce=False)
            elif ends[0] not in direct_ids:
                log.info("Relay %s of peer %s is gone", ends[0].hex()[:8], peer.node_id.hex()[:8])
                node.drop_relayed(addr, peer, announce=True)
            elif self._next_direct.get(addr, 0.0) <= now:
                self._next_direct[addr] = now + self.config.direct_retry
                targets = [a for a in peer.addrs if not is_synthetic(a)]
                if targets:
                    node.connect(targets, now)
        # Two relayed sessions with one node (the other end came through a second relay after the
        # first lost it): the one heard from last carries the traffic, the other goes.
        newest: dict[bytes, tuple[float, SocketAddr]] = {}
        for addr, peer in list(node.peers.items()):
            if not is_synthetic(addr):
                continue
            seen = newest.get(peer.node_id)
            if seen is None:
                newest[peer.node_id] = (peer.last_seen, addr)
                continue
            old = addr if peer.last_seen < seen[0] else seen[1]
            if old != addr:
                newest[peer.node_id] = (peer.last_seen, addr)
            node.drop_relayed(old, node.peers.get(old), announce=False)
        for addr in [a for a in node.pending if is_synthetic(a)]:
            ends = self.ends_of(addr)
            if ends is None or ends[0] not in direct_ids:
                node.drop_relayed(addr, None, announce=False)
        for addr in [a for a in self._next_direct if a not in node.peers]:
            del self._next_direct[addr]
        if not self.config.use:
            return
        # Wanted nodes: after the grace period for direct attempts, the lower node id starts a
        # relayed handshake through the first relay that lists the node.
        connected = {p.node_id for p in node.peers.values()}
        for nid, until in list(self.unreachable.items()):
            if until <= now or nid in connected:
                del self.unreachable[nid]
        for nid, wanted in list(self._wanted.items()):
            wanted.relays &= relays
            if nid in connected:
                # Kept while connected: which relays list it is what a refusal falls back on.
                wanted.tries = 0
                wanted.force = False
                continue
            if not wanted.relays:
                if now - wanted.since > self.config.direct_retry * 10:
                    del self._wanted[nid]
                continue
            grace = 0.0 if self.config.relay_at_once(nid) else self.config.direct_grace
            if now - wanted.since < grace or wanted.next_try > now:
                continue
            if node.node_id > nid and not wanted.force:
                continue  # the other end starts
            usable = [r for r in wanted.relays if wanted.refused.get(r, 0.0) <= now]
            if not usable:
                continue
            relay_id = min(usable)
            synthetic = self.synthetic_for(relay_id, nid)
            if synthetic is None or synthetic in node.pending:
                continue
            # Back off: a node that never answers (e.g. not one of ours, so the relay refuses it)
            # must not cost the relay a handshake every ``retry`` seconds forever.
            wanted.next_try = now + min(self.config.retry * 2**wanted.tries, MAX_RETRY)
            wanted.tries += 1
            log.info("Trying peer %s through relay %s", nid.hex()[:8], relay_id.hex()[:8])
            node.connect([synthetic], now)

    def relayed(self) -> list[dict[str, Any]]:
        """Relayed peers for status: synthetic address, relay and remote node ids."""
        out = []
        for addr in self.node.peers:
            ends = self.ends_of(addr)
            if ends is not None:
                out.append({"addr": format_sockaddr(addr), "relay": ends[0].hex(), "node_id": ends[1].hex()})
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "offer": self.config.offer,
            "use": self.config.use,
            "pairs": len(self._pairs),
            "relayed_peers": self.relayed(),
            "moved_direct": self.moved_direct,
            "at_once": (
                self.config.at_once
                if isinstance(self.config.at_once, bool)
                else sorted(nid.hex() for nid in self.config.at_once)
            ),
            "unreachable": sorted(nid.hex() for nid in self.unreachable),
            "counters": dict(self.counters),
        }


def _synthetic(n: int) -> SocketAddr:
    return (f"{SYNTHETIC_PREFIX}{n:x}", n)


def _fmt(addr: SocketAddr) -> str:
    return format_sockaddr(nice(addr))
