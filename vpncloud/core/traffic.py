"""Traffic counters, the stats-file text and the statsd lines (spec 18).

The counting methods are called for every datagram and every payload packet, so they do one dict
lookup and two integer additions. ``stats_text`` and ``statsd_text`` report the *current* period's
values; the node calls them first and then :meth:`TrafficStats.period` (which is what makes the
original's statsd counters per-period deltas).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from .errors import DecodeError, ReplayError
from .types import Range, SocketAddr, address_to_str, format_sockaddr, nice

#: An entry without traffic for this many consecutive periods is forgotten (spec 18.1).
IDLE_PERIODS = 5

_UNITS = ("KiB", "MiB", "GiB", "TiB")

_K = TypeVar("_K")

#: Why a datagram or payload packet was dropped. A fixed set, so a metrics label built from it stays
#: bounded whatever arrives; ``count_invalid_protocol``/``count_dropped_payload`` take one of these.
DROP_REASONS = (
    "malformed",
    "authentication",
    "replay",
    "unknown_peer",
    "flood_guard",
    "expired_key",
    "acl",
    "no_route",
)


def drop_reason(err: Exception) -> str:
    """The ``DROP_REASONS`` entry for an error that made a datagram invalid."""
    if isinstance(err, ReplayError):
        return "replay"
    if isinstance(err, DecodeError):
        return "malformed"
    return "authentication"


class TrafficEntry:
    """In/out bytes and packets of the current period, plus running totals."""

    __slots__ = (
        "idle_periods",
        "in_bytes",
        "in_bytes_total",
        "in_packets",
        "in_packets_total",
        "out_bytes",
        "out_bytes_total",
        "out_packets",
        "out_packets_total",
    )

    def __init__(self) -> None:
        self.in_bytes = 0
        self.in_packets = 0
        self.out_bytes = 0
        self.out_packets = 0
        self.in_bytes_total = 0
        self.in_packets_total = 0
        self.out_bytes_total = 0
        self.out_packets_total = 0
        self.idle_periods = 0

    def count_in(self, nbytes: int) -> None:
        """One incoming packet of ``nbytes``."""
        self.in_bytes += nbytes
        self.in_packets += 1

    def count_out(self, nbytes: int) -> None:
        """One outgoing packet of ``nbytes``."""
        self.out_bytes += nbytes
        self.out_packets += 1

    def period(self) -> None:
        """Move the period's values into the totals, reset them and track idleness."""
        if self.in_packets or self.out_packets:
            self.idle_periods = 0
        else:
            self.idle_periods += 1
        self.in_bytes_total += self.in_bytes
        self.in_packets_total += self.in_packets
        self.out_bytes_total += self.out_bytes
        self.out_packets_total += self.out_packets
        self.in_bytes = self.in_packets = self.out_bytes = self.out_packets = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-able snapshot (status output)."""
        return {
            "in_bytes": self.in_bytes,
            "in_packets": self.in_packets,
            "out_bytes": self.out_bytes,
            "out_packets": self.out_packets,
            "in_bytes_total": self.in_bytes_total + self.in_bytes,
            "in_packets_total": self.in_packets_total + self.in_packets,
            "out_bytes_total": self.out_bytes_total + self.out_bytes,
            "out_packets_total": self.out_packets_total + self.out_packets,
        }


class TrafficStats:
    """Per-peer datagram traffic, per address-pair payload traffic, invalid and dropped counters."""

    def __init__(self) -> None:
        self.peers: dict[SocketAddr, TrafficEntry] = {}
        self.payload: dict[tuple[bytes, bytes], TrafficEntry] = {}
        #: "in" side = invalid protocol traffic, "out" side = payload dropped for lack of a route
        self.dropped = TrafficEntry()
        #: totals of entries forgotten as idle, so that sums over all entries never go down
        self.retired_peers = TrafficEntry()
        self.retired_payload = TrafficEntry()
        #: packets dropped per reason since start (never reset by ``period``)
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

    # --- hot path --------------------------------------------------------------------------------

    def count_in_traffic(self, peer: SocketAddr, nbytes: int) -> None:
        """A datagram of ``nbytes`` received from ``peer``."""
        entry = self.peers.get(peer)
        if entry is None:
            entry = self.peers[peer] = TrafficEntry()
        entry.in_bytes += nbytes
        entry.in_packets += 1

    def count_out_traffic(self, peer: SocketAddr, nbytes: int) -> None:
        """A datagram of ``nbytes`` sent to ``peer``."""
        entry = self.peers.get(peer)
        if entry is None:
            entry = self.peers[peer] = TrafficEntry()
        entry.out_bytes += nbytes
        entry.out_packets += 1

    def count_in_payload(self, remote: bytes, local: bytes, nbytes: int) -> None:
        """Payload received from the mesh: ``remote`` = its source, ``local`` = its destination."""
        key = (remote, local)
        entry = self.payload.get(key)
        if entry is None:
            entry = self.payload[key] = TrafficEntry()
        entry.in_bytes += nbytes
        entry.in_packets += 1

    def count_out_payload(self, remote: bytes, local: bytes, nbytes: int) -> None:
        """Payload read from the device: ``remote`` = its destination, ``local`` = its source."""
        key = (remote, local)
        entry = self.payload.get(key)
        if entry is None:
            entry = self.payload[key] = TrafficEntry()
        entry.out_bytes += nbytes
        entry.out_packets += 1

    def count_invalid_protocol(self, nbytes: int, reason: str = "malformed") -> None:
        """A datagram that was dropped as invalid (bad, unknown, undecryptable)."""
        self.dropped.in_bytes += nbytes
        self.dropped.in_packets += 1
        self.drops[reason] += 1

    def count_dropped_payload(self, nbytes: int, reason: str = "no_route") -> None:
        """A payload packet that had no route (or that the ACL refused)."""
        self.dropped.out_bytes += nbytes
        self.dropped.out_packets += 1
        self.drops[reason] += 1

    # --- periods ---------------------------------------------------------------------------------

    def period(self) -> None:
        """Close the period: add to totals, reset, forget entries idle for 5 periods."""
        _period(self.peers, self.retired_peers)
        _period(self.payload, self.retired_payload)
        self.dropped.period()

    def total_peer_traffic(self) -> TrafficEntry:
        """Sum of the current period over all peers."""
        return _sum(self.peers.values())

    def total_payload_traffic(self) -> TrafficEntry:
        """Sum of the current period over all payload address pairs."""
        return _sum(self.payload.values())

    def snapshot(self) -> dict[str, object]:
        """JSON-able view for the status output."""
        return {
            "peers": {format_sockaddr(nice(peer)): e.as_dict() for peer, e in self.peers.items()},
            "payload": [
                {"remote": address_to_str(r), "local": address_to_str(lo), **e.as_dict()}
                for (r, lo), e in self.payload.items()
            ],
            "invalid_protocol": {"bytes": self.dropped.in_bytes, "packets": self.dropped.in_packets},
            "dropped_payload": {"bytes": self.dropped.out_bytes, "packets": self.dropped.out_packets},
            "retired": {"peers": self.retired_peers.as_dict(), "payload": self.retired_payload.as_dict()},
            "drops": dict(self.drops),
        }

    # --- renderers -------------------------------------------------------------------------------

    def stats_text(
        self,
        peers: Sequence[tuple[SocketAddr, int, str]],
        claims: Iterable[tuple[Range, SocketAddr, float]],
        cache: Iterable[tuple[bytes, SocketAddr, float]],
        now: float,
    ) -> str:
        """The stats file exactly as the original writes it (spec 18.2).

        ``peers`` = (address, ttl seconds, crypto name) in the order to print; ``claims``/``cache`` are
        :meth:`ClaimTable.claims`/:meth:`ClaimTable.cache` snapshots (printed in the given order, the
        original's order is hash-map order). Traffic lists are sorted by in+out bytes, descending; ties
        keep insertion order.
        """
        now_s = int(now)
        lines = ["peers:"]
        for addr, ttl, crypto in peers:
            lines.append(f'  - "{_peer(addr)}": {{ ttl_secs: {ttl}, crypto: {crypto} }}')
        lines += ["", "forwarding_table:", "  claims:"]
        for claim, peer, expiry in claims:
            lines.append(f'    - "{claim}": {{ peer: "{_peer(peer)}", timeout: {int(expiry) - now_s} }}')
        lines.append("  cache:")
        for raw, peer, expiry in cache:
            left = int(expiry) - now_s
            lines.append(f'    - "{address_to_str(raw)}": {{ peer: "{_peer(peer)}", timeout: {left} }}')
        lines += ["", "peer_traffic:"]
        for peer, entry in _by_volume(self.peers):
            lines.append(f'  - peer: "{_peer(peer)}"')
            lines.append(f"    in: {_traffic(entry.in_bytes, entry.in_packets)}")
            lines.append(f"    out: {_traffic(entry.out_bytes, entry.out_packets)}")
        lines += ["", "payload_traffic:"]
        for (remote, local), entry in _by_volume(self.payload):
            lines.append(f'  - addrs: ["{address_to_str(remote)}", "{address_to_str(local)}"]')
            lines.append(f"    in: {_traffic(entry.in_bytes, entry.in_packets)}")
            lines.append(f"    out: {_traffic(entry.out_bytes, entry.out_packets)}")
        lines += [
            "",
            f"invalid_protocol_traffic: {_traffic(self.dropped.in_bytes, self.dropped.in_packets)}",
            f"dropped_payload_traffic: {_traffic(self.dropped.out_bytes, self.dropped.out_packets)}",
            "",
        ]
        return "\n".join(lines) + "\n"

    def statsd_text(self, prefix: str, peer_count: int, cache_entries: int, claims: int) -> str:
        """The statsd datagram text (spec 18.3): lines joined by newlines, no trailing newline."""
        proto = self.total_peer_traffic()
        payload = self.total_payload_traffic()
        dropped = self.dropped
        values: list[tuple[str, int, str]] = [
            ("peer_count", peer_count, "g"),
            ("table_cache_entries", cache_entries, "g"),
            ("table_claims", claims, "g"),
            ("traffic.protocol.inbound.bytes", proto.in_bytes, "c"),
            ("traffic.protocol.inbound.packets", proto.in_packets, "c"),
            ("traffic.protocol.outbound.bytes", proto.out_bytes, "c"),
            ("traffic.protocol.outbound.packets", proto.out_packets, "c"),
            ("traffic.payload.inbound.bytes", payload.in_bytes, "c"),
            ("traffic.payload.inbound.packets", payload.in_packets, "c"),
            ("traffic.payload.outbound.bytes", payload.out_bytes, "c"),
            ("traffic.payload.outbound.packets", payload.out_packets, "c"),
            ("invalid_protocol_traffic.bytes", dropped.in_bytes, "c"),
            ("invalid_protocol_traffic.packets", dropped.in_packets, "c"),
            ("dropped_payload.bytes", dropped.out_bytes, "c"),
            ("dropped_payload.packets", dropped.out_packets, "c"),
        ]
        return "\n".join(f"{prefix}.{key}:{value}|{kind}" for key, value, kind in values)


def format_rate(nbytes: int) -> str:
    """The original's ``Bytes`` display of a per-second value: ``N B``, ``x.y KiB`` ... ``x.y TiB``.

    Thresholds are 512 at every step. Python's ``.1f`` rounds exact ties to even, like current Rust.
    """
    if nbytes < 512:
        return f"{nbytes} B"
    size = nbytes / 1024.0
    for unit in _UNITS[:-1]:
        if size < 512.0:
            return f"{size:.1f} {unit}"
        size /= 1024.0
    return f"{size:.1f} {_UNITS[-1]}"


def _traffic(nbytes: int, packets: int) -> str:
    # rate over the 60-s stats interval, integer division as in the original (u64 / 60)
    return f'{{ display: "{format_rate(nbytes // 60)}/s", bytes: {nbytes}, packets: {packets} }}'


def _peer(addr: SocketAddr) -> str:
    return format_sockaddr(nice(addr))


def _by_volume(table: dict[_K, TrafficEntry]) -> list[tuple[_K, TrafficEntry]]:
    # sorted() is stable: equal volumes keep insertion order
    return sorted(table.items(), key=lambda item: item[1].in_bytes + item[1].out_bytes, reverse=True)


def _period(table: dict[_K, TrafficEntry], retired: TrafficEntry) -> None:
    idle = []
    for key, entry in table.items():
        entry.period()
        if entry.idle_periods >= IDLE_PERIODS:
            idle.append(key)
    for key in idle:
        entry = table.pop(key)
        retired.in_bytes_total += entry.in_bytes_total
        retired.in_packets_total += entry.in_packets_total
        retired.out_bytes_total += entry.out_bytes_total
        retired.out_packets_total += entry.out_packets_total


def _sum(entries: Iterable[TrafficEntry]) -> TrafficEntry:
    total = TrafficEntry()
    for entry in entries:
        total.in_bytes += entry.in_bytes
        total.in_packets += entry.in_packets
        total.out_bytes += entry.out_bytes
        total.out_packets += entry.out_packets
    return total
