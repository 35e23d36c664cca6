"""A multi-node harness: N protocol cores on the virtual network, driven like the daemon drives one.

For each node the harness plays the daemon's part (spec 2, 10.5, 15.6):

* it delivers datagrams from the virtual network with ``node.receive_datagram`` and puts
  ``node.datagrams_to_send()`` on the network from the node's endpoint;
* it calls ``node.handle_timer(now)`` exactly at ``node.get_timer()`` (1-s ticks, the design intent);
* a virtual TUN/TAP device: packets are injected with ``node.receive_packet`` and what the node writes
  to its device is collected in :attr:`SimNode.device`;
* events are handled as the daemon would: beacons go to a shared in-memory "file", own addresses are
  reported on ``OwnAddressesDue`` (the endpoint address, like the daemon's primary-address probe), and
  ``ResolvePeer`` is answered from an in-memory name table (:attr:`Harness.dns`).

All time is virtual (:class:`~vpncloud.sim.network.Scheduler`), all randomness seeded, so a test can
simulate a day in seconds and get the same result on every run.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vpncloud.core.beacon import DEFAULT_TTL_HOURS, decode_beacon, hour_stamp
from vpncloud.core.identity import Identity
from vpncloud.core.node import (
    BeaconLoad,
    BeaconStore,
    Event,
    Node,
    NodeConfig,
    OwnAddressesDue,
    ResolvePeer,
)
from vpncloud.core.peer_crypto import CryptoConfig
from vpncloud.core.primitives import Algorithm
from vpncloud.core.types import DeviceType, Mode, Range, SocketAddr

from .network import Endpoint, LinkParams, NatBox, Network, Scheduler, canon

__all__ = [
    "DEFAULT_ALGORITHMS",
    "Harness",
    "SimNode",
    "ethernet_frame",
    "identity_from_password",
    "ipv4_packet",
    "ipv6_packet",
    "mac",
]

#: Fixed benchmark results (MB/s) so no node measures anything: the speeds of spec 22.5's first row.
DEFAULT_ALGORITHMS: tuple[tuple[Algorithm, float], ...] = (
    (Algorithm.AES128, 600.0),
    (Algorithm.AES256, 500.0),
    (Algorithm.CHACHA20, 400.0),
)


@functools.lru_cache(maxsize=16)
def identity_from_password(password: str) -> Identity:
    """Identity from a password, cached: PBKDF2 is deterministic and identities are immutable."""
    return Identity.from_config(password=password)


# --- packet builders ---------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@functools.lru_cache(maxsize=1024)
def _packed4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ipv4_packet(src: str, dst: str, payload: bytes = b"", proto: int = 17, ident: int = 0) -> bytes:
    """A well-formed IPv4 packet (20-byte header with checksum) carrying ``payload``."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        ident & 0xFFFF,
        0,
        64,
        proto,
        0,
        _packed4(src),
        _packed4(dst),
    )
    csum = _checksum(header)
    return header[:10] + struct.pack("!H", csum) + header[12:] + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"", next_header: int = 17) -> bytes:
    """A well-formed IPv6 packet (40-byte header) carrying ``payload``."""
    return (
        struct.pack("!IHBB", 0x60000000, len(payload), next_header, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def mac(text: str) -> bytes:
    """``"02:00:00:00:00:01"`` → 6 bytes."""
    out = bytes(int(p, 16) for p in text.split(":"))
    if len(out) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return out


def ethernet_frame(
    dst: bytes,
    src: bytes,
    payload: bytes = b"",
    ethertype: int = 0x0800,
    vlan: int | None = None,
    pcp: int = 0,
) -> bytes:
    """An Ethernet frame; with ``vlan`` a single 802.1Q tag (TCI = PCP << 13 | VLAN id) is inserted."""
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, (pcp << 13) | (vlan & 0x0FFF))
    return dst + src + tag + struct.pack("!H", ethertype) + payload


# --- nodes ------------------------------------------------------------------------------------------


@dataclass
class SimNode:
    """One simulated node: the core, its UDP endpoint, its virtual device and what happened to it."""

    name: str
    index: int
    node: Node
    endpoint: Endpoint
    config: NodeConfig
    crypto: CryptoConfig
    rng: random.Random
    vpn_ip: str
    mac: bytes
    beacon_file: str
    device: list[tuple[float, bytes]] = field(default_factory=list)
    events: list[tuple[float, Event]] = field(default_factory=list)
    timer: Any = None
    timer_at: float | None = None
    alive: bool = True

    @property
    def addr(self) -> SocketAddr:
        """The node's own socket address (mapped; inside its NAT if it has one)."""
        return self.endpoint.addr

    @property
    def node_id(self) -> bytes:
        return self.node.node_id

    def peer_ids(self) -> set[bytes]:
        """Node ids of the established peers."""
        return {p.node_id for p in self.node.peers.values()}

    def peer_addrs(self) -> set[SocketAddr]:
        return set(self.node.peers)

    def invalid_packets(self) -> int:
        """Datagrams the node counted as invalid protocol traffic (all periods)."""
        d = self.node.traffic.dropped
        return d.in_packets + d.in_packets_total

    def dropped_payload_packets(self) -> int:
        """Device packets the node dropped for lack of a route (all periods)."""
        d = self.node.traffic.dropped
        return d.out_packets + d.out_packets_total

    def device_payloads(self) -> list[bytes]:
        """Everything written to the device so far."""
        return [p for _, p in self.device]

    def events_of(self, kind: type) -> list[Any]:
        """Events of one class, in order."""
        return [e for _, e in self.events if isinstance(e, kind)]

    def __repr__(self) -> str:
        return f"SimNode({self.name!r}, {self.addr!r})"


class Harness:
    """N nodes on one virtual network. See the module docstring.

    ``seed`` fixes every random choice: the network's (loss, delay) and each node's ``rng`` (node ids,
    salts, ephemeral keys, nonces).
    """

    def __init__(
        self,
        seed: int = 0,
        link: LinkParams | None = None,
        start: float = 0.0,
        record: bool = True,
    ) -> None:
        self.seed = seed
        self.sched = Scheduler(start)
        self.net = Network(self.sched, random.Random(seed), default=link, record=record)
        self.nodes: list[SimNode] = []
        self.by_name: dict[str, SimNode] = {}
        #: In-memory "files" for beacons (name → content), shared by all nodes.
        self.files: dict[str, str] = {}
        #: Name table answering ``ResolvePeer`` (name → addresses).
        self.dns: dict[str, list[SocketAddr]] = {}

    # -- clock -----------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.sched.now

    def run_for(self, seconds: float) -> None:
        """Advance virtual time by ``seconds``, running every event on the way."""
        self.sched.run_until(self.sched.now + seconds)

    def run_until(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Run until ``pred()`` holds (checked whenever virtual time is about to advance) or ``timeout``
        virtual seconds have passed. Returns whether ``pred`` held; :attr:`now` tells when."""
        deadline = self.sched.now + timeout
        while True:
            nxt = self.sched.next_time()
            if (nxt is None or nxt > self.sched.now) and pred():
                return True
            if nxt is None or nxt > deadline:
                self.sched.now = max(self.sched.now, deadline)
                return pred()
            self.sched.step()

    # -- nodes -----------------------------------------------------------------------------------

    def add_node(
        self,
        name: str | None = None,
        addr: SocketAddr | None = None,
        *,
        config: NodeConfig | None = None,
        crypto: CryptoConfig | None = None,
        password: str = "test123",
        algorithms: Iterable[tuple[Algorithm, float]] = DEFAULT_ALGORITHMS,
        plain_allowed: bool = False,
        device_type: DeviceType = DeviceType.TUN,
        mode: Mode = Mode.NORMAL,
        claims: list[Range] | None = None,
        nat: NatBox | None = None,
        peers: Iterable[SimNode | SocketAddr | str] = (),
        beacon_file: str = "beacon",
        node_id: bytes | None = None,
    ) -> SimNode:
        """Create a node, attach it to the network and start it like the daemon does.

        ``addr`` defaults to ``10.0.0.<i+1>:3210`` (``192.168.<i+1>.2`` behind a NAT). TUN nodes get a
        VPN address ``10.99.0.<i+1>`` that they auto-claim (``/32``, spec 11.6) unless ``claims`` or a
        ``config`` is given; TAP nodes get the MAC ``02:00:00:00:00:<i+1>``. ``peers`` are configured
        peers (another :class:`SimNode`, a socket address, or a name in :attr:`dns`).
        """
        i = len(self.nodes)
        name = name if name is not None else f"n{i + 1}"
        if name in self.by_name:
            raise ValueError(f"duplicate node name {name!r}")
        if addr is None:
            addr = (f"192.168.{i + 1}.2", 3210) if nat is not None else (f"10.0.0.{i + 1}", 3210)
        vpn_ip = f"10.99.{(i + 1) // 256}.{(i + 1) % 256}"
        if config is None:
            if claims is None:
                claims = (
                    [Range(ipaddress.IPv4Address(vpn_ip).packed, 32)] if device_type is DeviceType.TUN else []
                )
            config = NodeConfig(device_type=device_type, mode=mode, port=addr[1], claims=list(claims))
        if crypto is None:
            crypto = CryptoConfig(
                identity=identity_from_password(password),
                algorithms=list(algorithms),
                plain_allowed=plain_allowed,
            )
        rng = random.Random(f"{self.seed}/{name}")
        node = Node(config, crypto, self.sched.now, rng, node_id=node_id)
        holder: list[SimNode] = []
        endpoint = self.net.attach(
            addr, lambda data, src, now: self._on_datagram(holder[0], data, src), nat=nat
        )
        sn = SimNode(
            name=name,
            index=i,
            node=node,
            endpoint=endpoint,
            config=config,
            crypto=crypto,
            rng=rng,
            vpn_ip=vpn_ip,
            mac=bytes([2, 0, 0, 0, (i + 1) >> 8, (i + 1) & 0xFF]),
            beacon_file=beacon_file,
        )
        holder.append(sn)
        self.nodes.append(sn)
        self.by_name[name] = sn
        # Startup (spec 14.5 / 10.5): own address first, then the configured peers.
        node.set_own_addresses([endpoint.addr])
        for p in peers:
            self.add_configured_peer(sn, p)
        self._flush(sn)
        return sn

    def add_configured_peer(self, sn: SimNode, peer: SimNode | SocketAddr | str) -> None:
        """Configure a peer for ``sn`` (connect now and keep reconnecting, spec 10.4)."""
        if isinstance(peer, SimNode):
            name, addrs = f"{peer.addr[0]}:{peer.addr[1]}", [self.public_addr(peer, sn)]
        elif isinstance(peer, str):
            name, addrs = peer, list(self.dns.get(peer, []))
        else:
            name, addrs = f"{peer[0]}:{peer[1]}", [canon(peer)]
        sn.node.add_configured_peer(name, addrs, self.now)
        self._flush(sn)

    def public_addr(self, target: SimNode, seen_from: SimNode | None = None) -> SocketAddr:
        """The address ``seen_from`` should use to reach ``target`` (its own address if on the same LAN
        or public; NATed nodes have no stable public address, so this is only for public targets)."""
        if target.endpoint.nat is not None and (
            seen_from is None or seen_from.endpoint.nat is not target.endpoint.nat
        ):
            raise ValueError(f"{target.name} is behind a NAT and has no address reachable from outside")
        return target.addr

    def connect(self, a: SimNode, b: SimNode | SocketAddr) -> None:
        """``a`` starts a handshake to ``b`` (``node.connect``; not a configured peer)."""
        addr = self.public_addr(b, a) if isinstance(b, SimNode) else canon(b)
        a.node.connect([addr], self.now)
        self._flush(a)

    def stop(self, sn: SimNode, graceful: bool = True) -> None:
        """Shut a node down (CLOSE to every peer if ``graceful``) and take it off the network."""
        if graceful:
            sn.node.shutdown(self.now)
            self._flush(sn)
        sn.alive = False
        if sn.timer is not None:
            sn.timer.cancel()
        self.net.detach(sn.addr)

    def deliver_raw(self, sn: SimNode, data: bytes, src: SocketAddr) -> None:
        """Hand ``sn`` a datagram as if it had arrived from ``src`` (replays, forgeries, reflections)."""
        self._on_datagram(sn, data, canon(src))

    # -- device side -----------------------------------------------------------------------------

    def inject(self, sn: SimNode, packet: bytes) -> None:
        """A packet read from ``sn``'s TUN/TAP device."""
        sn.node.receive_packet(packet, self.now)
        self._flush(sn)

    def send_packet(self, a: SimNode, b: SimNode, payload: bytes = b"", *, vlan: int | None = None) -> bytes:
        """Inject a packet from ``a``'s VPN address to ``b``'s (IPv4 on TUN, an Ethernet frame on TAP)
        into ``a``'s device; returns the packet so the test can look for it at ``b``."""
        if a.config.device_type is DeviceType.TUN:
            packet = ipv4_packet(a.vpn_ip, b.vpn_ip, payload)
        else:
            packet = ethernet_frame(b.mac, a.mac, payload, vlan=vlan)
        self.inject(a, packet)
        return packet

    # -- status ----------------------------------------------------------------------------------

    def connected(self, a: SimNode, b: SimNode) -> bool:
        """``a`` has an established peer with ``b``'s node id."""
        return b.node_id in a.peer_ids()

    def connected_pairs(self, nodes: Iterable[SimNode] | None = None) -> set[tuple[str, str]]:
        """Directed pairs ``(a, b)`` where ``a`` has ``b`` as an established peer."""
        ns = list(nodes) if nodes is not None else self.nodes
        ids = {n.node_id: n.name for n in ns}
        return {(a.name, ids[i]) for a in ns for i in a.peer_ids() if i in ids}

    def full_mesh(self, nodes: Iterable[SimNode] | None = None) -> bool:
        """Every node in ``nodes`` (default: all alive) has every other one as a peer."""
        ns = list(nodes) if nodes is not None else [n for n in self.nodes if n.alive]
        return len(self.connected_pairs(ns)) == len(ns) * (len(ns) - 1)

    # -- plumbing ----------------------------------------------------------------------------------

    def _on_datagram(self, sn: SimNode, data: bytes, src: SocketAddr) -> None:
        if not sn.alive:
            return
        sn.node.receive_datagram(data, src, self.now)
        self._flush(sn)

    def _on_timer(self, sn: SimNode) -> None:
        sn.timer = None
        sn.timer_at = None
        if not sn.alive:
            return
        sn.node.handle_timer(self.now)
        self._flush(sn)

    def _schedule_timer(self, sn: SimNode) -> None:
        if not sn.alive:
            return
        when = sn.node.get_timer()
        if sn.timer_at is not None and sn.timer_at <= when:
            return
        if sn.timer is not None:
            sn.timer.cancel()
        sn.timer_at = when
        sn.timer = self.sched.at(when, self._on_timer, sn)

    def _flush(self, sn: SimNode) -> None:
        """Move everything the node produced to the network, the device and the event handlers."""
        node = sn.node
        now = self.sched.now
        out = node.datagrams_to_send()
        if out and sn.alive:
            send = sn.endpoint.send
            for data, dst in out:
                send(data, dst)
        packets = node.packets_to_device()
        if packets:
            sn.device.extend((now, p) for p in packets)
        ev = node.next_event()
        if ev is not None:
            while ev is not None:
                sn.events.append((now, ev))
                self._handle_event(sn, ev)
                ev = node.next_event()
            # Handling events calls back into the node, which may have produced more output.
            self._flush(sn)
            return
        # Inlined _schedule_timer fast path: the timer is usually already set for the next tick.
        if sn.timer_at is None or node.get_timer() < sn.timer_at:
            self._schedule_timer(sn)

    def _handle_event(self, sn: SimNode, ev: Event) -> None:
        now = self.now
        if isinstance(ev, BeaconStore):
            self.files[sn.beacon_file] = ev.beacon + "\n"
        elif isinstance(ev, BeaconLoad):
            text = self.files.get(sn.beacon_file)
            if text is not None:
                addrs = decode_beacon(text, sn.config.beacon_password, DEFAULT_TTL_HOURS, hour_stamp(now))
                sn.node.beacon_loaded(addrs, now)
        elif isinstance(ev, OwnAddressesDue):
            sn.node.set_own_addresses([sn.addr])
        elif isinstance(ev, ResolvePeer):
            resolved = self.dns.get(ev.name)
            if resolved:
                sn.node.peer_resolved(ev.name, list(resolved), now)
