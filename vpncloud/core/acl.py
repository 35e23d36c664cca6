"""Access control for tunnel traffic: a compiled policy with a small stateful flow table (sans-I/O).

Theory of operation
-------------------
An :class:`AclPolicy` is compiled from the mesh description (``vpncloud/mesh/acl.py``) into rules of
``(source networks, destination networks, protocol, destination ports)``. The node consults it for
every packet read from the device (:meth:`AclPolicy.check`, ``outbound=True``) and every DATA payload
from a peer (``outbound=False``). A packet passes when

1. it belongs to a tracked flow in either direction (a reply to an allowed connection, or more of it),
2. or a rule allows it; the flow is then tracked, so its replies pass on this node too.

The flow table is keyed by the 5-tuple (protocol, addresses, ports; the ICMP echo identifier stands in
for ports), bounded (LRU, ``max_flows``) and entries expire after an idle timeout per protocol, driven
by the ``now`` passed in. ICMP errors (unreachable, time exceeded, packet too big, ...) pass when the
packet quoted inside them belongs to a tracked flow, so path MTU discovery keeps working.

Non-IP frames (ARP, ...) in TAP mode pass when ``allow_non_ip`` is set (the default), otherwise they
are dropped. Unparseable IP packets are dropped. Without a policy the node allows everything, like the
original.

The serialised form (:meth:`AclPolicy.to_dict` / :meth:`AclPolicy.from_dict`) is what the daemon loads
from its separate ACL file; :meth:`AclPolicy.from_dict` raises ``ConfigError`` with a clear message.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = [
    "PROTOCOLS",
    "AclCounters",
    "AclPolicy",
    "AclRule",
    "FlowKey",
    "PacketInfo",
    "parse_ip_packet",
    "parse_port_range",
]

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Protocol names of the policy language -> IP protocol numbers (both ICMP versions are "icmp").
PROTOCOLS: dict[str, tuple[int, ...] | None] = {
    "any": None,
    "tcp": (6,),
    "udp": (17,),
    "icmp": (1, 58),
}
_ICMP = (1, 58)
_ICMP_ECHO = {1: (8, 0), 58: (128, 129)}  # (request, reply) types
_ICMP_ERRORS = {1: (3, 4, 5, 11, 12), 58: (1, 2, 3, 4)}
_V6_EXT = (0, 43, 60, 51)  # hop-by-hop, routing, destination options, AH (fragment handled apart)

FlowKey = tuple[int, bytes, bytes, int, int]


@dataclass(frozen=True, slots=True)
class PacketInfo:
    """What the policy looks at: protocol, addresses and ports (ICMP: id/type; else 0)."""

    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    icmp_type: int | None = None
    inner: PacketInfo | None = None  # the quoted packet of an ICMP error
    has_ports: bool = True  # False for non-first fragments and truncated transport headers

    @property
    def key(self) -> FlowKey:
        return (self.proto, self.src, self.dst, self.sport, self.dport)

    @property
    def reverse_key(self) -> FlowKey:
        return (self.proto, self.dst, self.src, self.dport, self.sport)


def _transport(
    proto: int, data: bytes, off: int, src: bytes, dst: bytes, first: bool, depth: int
) -> PacketInfo:
    if not first:
        return PacketInfo(proto, src, dst, 0, 0, has_ports=False)
    if proto in (6, 17, 132, 136):
        if len(data) < off + 4:
            return PacketInfo(proto, src, dst, 0, 0, has_ports=False)
        sport = (data[off] << 8) | data[off + 1]
        dport = (data[off + 2] << 8) | data[off + 3]
        return PacketInfo(proto, src, dst, sport, dport)
    if proto in _ICMP:
        if len(data) < off + 2:
            return PacketInfo(proto, src, dst, 0, 0, has_ports=False)
        itype = data[off]
        if itype in _ICMP_ECHO[proto]:
            ident = (data[off + 4] << 8) | data[off + 5] if len(data) >= off + 6 else 0
            # Echo request and reply share the identifier: request = "port" on the dst side.
            if itype == _ICMP_ECHO[proto][0]:
                return PacketInfo(proto, src, dst, 0, ident, icmp_type=itype)
            return PacketInfo(proto, src, dst, ident, 0, icmp_type=itype)
        inner = None
        if itype in _ICMP_ERRORS[proto] and depth == 0 and len(data) > off + 8:
            inner = parse_ip_packet(data[off + 8 :], _depth=1)
        return PacketInfo(proto, src, dst, 0, 0, icmp_type=itype, inner=inner)
    return PacketInfo(proto, src, dst, 0, 0)


def parse_ip_packet(data: bytes, *, _depth: int = 0) -> PacketInfo | None:
    """Protocol, addresses and ports of an IPv4/IPv6 packet; None when it is not a parseable IP packet.

    Lenient with truncation after the addresses (ICMP errors quote truncated packets).
    """
    if not data:
        return None
    version = data[0] >> 4
    if version == 4:
        if len(data) < 20:
            return None
        ihl = (data[0] & 0x0F) * 4
        if ihl < 20:
            return None
        frag_offset = ((data[6] & 0x1F) << 8) | data[7]
        return _transport(
            data[9], data, ihl, bytes(data[12:16]), bytes(data[16:20]), frag_offset == 0, _depth
        )
    if version == 6:
        if len(data) < 40:
            return None
        src, dst = bytes(data[8:24]), bytes(data[24:40])
        nxt, off, first = data[6], 40, True
        for _ in range(8):  # bounded walk over extension headers
            if nxt in _V6_EXT:
                if len(data) < off + 2:
                    return None
                size = (data[off + 1] + 2) * 4 if nxt == 51 else (data[off + 1] + 1) * 8
                nxt, off = data[off], off + size
            elif nxt == 44:  # fragment header
                if len(data) < off + 8:
                    return None
                first = (((data[off + 2] << 8) | data[off + 3]) >> 3) == 0
                nxt, off = data[off], off + 8
            else:
                break
        else:
            return None
        return _transport(nxt, data, off, src, dst, first, _depth)
    return None


def _frame_ip(frame: bytes) -> bytes | None:
    """The IP packet inside an Ethernet frame (one optional 802.1Q tag), or None for non-IP frames."""
    if len(frame) < 14:
        return None
    off = 12
    ethertype = (frame[off] << 8) | frame[off + 1]
    if ethertype == 0x8100:
        if len(frame) < 18:
            return None
        off = 16
        ethertype = (frame[off] << 8) | frame[off + 1]
    if ethertype in (0x0800, 0x86DD):
        return frame[off + 2 :]
    return None


def _net(text: str) -> IPNet:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"Invalid network {text!r} in ACL: {exc}") from None


def parse_port_range(value: Any) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ConfigError(f"Invalid port {value!r} in ACL")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str) and value.strip():
        parts = value.strip().split("-")
        try:
            if len(parts) == 1:
                lo = hi = int(parts[0])
            elif len(parts) == 2:
                lo, hi = int(parts[0]), int(parts[1])
            else:
                raise ValueError(value)
        except ValueError:
            raise ConfigError(f"Invalid port range {value!r} in ACL (use 22 or 8000-8100)") from None
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = parse_port_range(value[0])[0], parse_port_range(value[1])[0]
    else:
        raise ConfigError(f"Invalid port {value!r} in ACL")
    if not (0 <= lo <= hi <= 65535):
        raise ConfigError(f"Invalid port range {value!r} in ACL (0-65535, low <= high)")
    return lo, hi


@dataclass(frozen=True)
class AclRule:
    """Allow ``proto`` traffic from any of ``src`` to any of ``dst`` (destination ports, if given)."""

    src: tuple[IPNet, ...]
    dst: tuple[IPNet, ...]
    proto: str = "any"
    ports: tuple[tuple[int, int], ...] = ()  # empty: every port
    name: str = ""

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS:
            raise ConfigError(f"Invalid protocol {self.proto!r} in ACL (one of {', '.join(PROTOCOLS)})")
        if self.ports and self.proto not in ("tcp", "udp"):
            raise ConfigError("ACL ports need protocol tcp or udp")

    def matches_addrs(self, src: bytes, dst: bytes) -> bool:
        return _in_nets(src, self.src) and _in_nets(dst, self.dst)

    def matches(self, info: PacketInfo) -> bool:
        numbers = PROTOCOLS[self.proto]
        if numbers is not None and info.proto not in numbers:
            return False
        if self.ports:
            if not info.has_ports:
                return False
            if not any(lo <= info.dport <= hi for lo, hi in self.ports):
                return False
        return self.matches_addrs(info.src, info.dst)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "src": [str(n) for n in self.src],
            "dst": [str(n) for n in self.dst],
            "proto": self.proto,
        }
        if self.ports:
            out["ports"] = [f"{lo}-{hi}" if lo != hi else lo for lo, hi in self.ports]
        if self.name:
            out["name"] = self.name
        return out


def _in_nets(addr: bytes, nets: tuple[IPNet, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in nets if net.version == ip.version)


@dataclass
class AclCounters:
    allowed_rule: int = 0
    allowed_flow: int = 0
    denied_out: int = 0
    denied_in: int = 0
    evicted_flows: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "allowed_rule": self.allowed_rule,
            "allowed_flow": self.allowed_flow,
            "denied_out": self.denied_out,
            "denied_in": self.denied_in,
            "evicted_flows": self.evicted_flows,
        }


#: Idle timeouts (seconds) of tracked flows per IP protocol number; others use "other".
DEFAULT_TIMEOUTS = {"tcp": 3600.0, "udp": 180.0, "icmp": 30.0, "other": 180.0}


@dataclass
class AclPolicy:
    """A compiled policy plus the node's flow table (one instance per node)."""

    rules: tuple[AclRule, ...] = ()
    allow_non_ip: bool = True
    max_flows: int = 16384
    timeouts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    counters: AclCounters = field(default_factory=AclCounters)

    def __post_init__(self) -> None:
        if self.max_flows < 1:
            raise ConfigError("ACL max_flows must be at least 1")
        self._flows: OrderedDict[FlowKey, float] = OrderedDict()

    # --- decisions -------------------------------------------------------------------------------

    def check(self, packet: bytes, now: float, *, outbound: bool, frame: bool = False) -> bool:
        """Whether ``packet`` (an IP packet, or an Ethernet frame with ``frame``) may pass."""
        data: bytes | None = packet
        if frame:
            data = _frame_ip(packet)
            if data is None:
                return self._count(self.allow_non_ip, outbound)
        assert data is not None
        info = parse_ip_packet(data)
        if info is None:
            return self._count(False, outbound)
        if self._flow_hit(info, now):
            self.counters.allowed_flow += 1
            return True
        if info.inner is not None and self._tracked(info.inner, now):
            # An ICMP error about a packet of a tracked flow.
            self.counters.allowed_flow += 1
            return True
        if self.allows(info):
            self.counters.allowed_rule += 1
            self._track(info, now)
            return True
        return self._count(False, outbound)

    def allows(self, info: PacketInfo) -> bool:
        """Whether a rule allows this packet (no flow state)."""
        return any(rule.matches(info) for rule in self.rules)

    def permits(self, src: bytes, dst: bytes, proto: str | None = None, port: int | None = None) -> bool:
        """For policy tests: can ``src`` open ``proto``/``port`` traffic to ``dst``? None = "any at all"."""
        for rule in self.rules:
            if not rule.matches_addrs(src, dst):
                continue
            if proto is not None and rule.proto not in ("any", proto):
                continue
            if port is not None and rule.ports and not any(lo <= port <= hi for lo, hi in rule.ports):
                continue
            return True
        return False

    def _count(self, ok: bool, outbound: bool) -> bool:
        if not ok:
            if outbound:
                self.counters.denied_out += 1
            else:
                self.counters.denied_in += 1
        return ok

    # --- flow table ------------------------------------------------------------------------------

    def _timeout(self, proto: int) -> float:
        name = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(proto, "other")
        return self.timeouts.get(name, DEFAULT_TIMEOUTS[name])

    def _tracked(self, info: PacketInfo, now: float) -> bool:
        for key in (info.key, info.reverse_key):
            deadline = self._flows.get(key)
            if deadline is not None and deadline >= now:
                return True
        return False

    def _flow_hit(self, info: PacketInfo, now: float) -> bool:
        for key in (info.key, info.reverse_key):
            deadline = self._flows.get(key)
            if deadline is None:
                continue
            if deadline < now:
                del self._flows[key]
                continue
            self._flows[key] = now + self._timeout(info.proto)
            self._flows.move_to_end(key)
            return True
        return False

    def _track(self, info: PacketInfo, now: float) -> None:
        if info.proto in _ICMP and info.icmp_type not in (_ICMP_ECHO[info.proto][0],):
            return  # only echo requests open an ICMP "flow"
        self._flows[info.key] = now + self._timeout(info.proto)
        self._flows.move_to_end(info.key)
        while len(self._flows) > self.max_flows:
            self._flows.popitem(last=False)
            self.counters.evicted_flows += 1

    def expire(self, now: float) -> None:
        """Drop idle flows from the old end of the table (call once per tick)."""
        while self._flows:
            key, deadline = next(iter(self._flows.items()))
            if deadline >= now:
                break
            del self._flows[key]

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    def snapshot(self) -> dict[str, int]:
        out = self.counters.as_dict()
        out["flows"] = len(self._flows)
        out["rules"] = len(self.rules)
        return out

    # --- serialised form -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": [r.to_dict() for r in self.rules],
            "allow_non_ip": self.allow_non_ip,
            "max_flows": self.max_flows,
            "timeouts": dict(self.timeouts),
        }

    @classmethod
    def from_dict(cls, data: Any) -> AclPolicy:
        """Build from the serialised form; raises ``ConfigError`` with a clear message."""
        if not isinstance(data, dict):
            raise ConfigError("ACL must be a mapping with a 'rules' list")
        unknown = set(data) - {"rules", "allow_non_ip", "max_flows", "timeouts"}
        if unknown:
            raise ConfigError(f"Unknown ACL keys: {', '.join(sorted(map(str, unknown)))}")
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise ConfigError("ACL 'rules' must be a list")
        rules = []
        for i, raw in enumerate(raw_rules):
            if not isinstance(raw, dict):
                raise ConfigError(f"ACL rule {i} must be a mapping")
            extra = set(raw) - {"src", "dst", "proto", "ports", "name"}
            if extra:
                raise ConfigError(f"ACL rule {i}: unknown keys {', '.join(sorted(map(str, extra)))}")
            src, dst = raw.get("src"), raw.get("dst")
            if not isinstance(src, list) or not isinstance(dst, list) or not src or not dst:
                raise ConfigError(f"ACL rule {i}: 'src' and 'dst' must be non-empty lists of networks")
            ports = raw.get("ports", [])
            if not isinstance(ports, list):
                raise ConfigError(f"ACL rule {i}: 'ports' must be a list")
            proto = raw.get("proto", "any")
            if not isinstance(proto, str):
                raise ConfigError(f"ACL rule {i}: 'proto' must be a string")
            rules.append(
                AclRule(
                    src=tuple(_net(str(n)) for n in src),
                    dst=tuple(_net(str(n)) for n in dst),
                    proto=proto.lower(),
                    ports=tuple(parse_port_range(p) for p in ports),
                    name=str(raw.get("name", "")),
                )
            )
        allow_non_ip = data.get("allow_non_ip", True)
        max_flows = data.get("max_flows", 16384)
        if not isinstance(allow_non_ip, bool):
            raise ConfigError("ACL 'allow_non_ip' must be true or false")
        if not isinstance(max_flows, int) or isinstance(max_flows, bool) or max_flows < 1:
            raise ConfigError("ACL 'max_flows' must be a positive integer")
        timeouts = dict(DEFAULT_TIMEOUTS)
        raw_timeouts = data.get("timeouts", {})
        if not isinstance(raw_timeouts, dict):
            raise ConfigError("ACL 'timeouts' must be a mapping")
        for name, value in raw_timeouts.items():
            if name not in DEFAULT_TIMEOUTS:
                raise ConfigError(f"Unknown ACL timeout {name!r} (known: {', '.join(DEFAULT_TIMEOUTS)})")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ACL timeout {name!r} must be a positive number of seconds")
            timeouts[name] = float(value)
        return cls(tuple(rules), allow_non_ip=allow_non_ip, max_flows=max_flows, timeouts=timeouts)
