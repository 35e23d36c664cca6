"""The harness itself: packet builders, run_until, determinism, daemon-side event handling."""

from __future__ import annotations

import ipaddress
import struct

from vpncloud.core.node import OwnAddressesDue, PeerDisconnected, ResolvePeer
from vpncloud.core.payload import parse_frame, parse_packet
from vpncloud.sim.harness import Harness, _checksum, ethernet_frame, ipv4_packet, ipv6_packet, mac
from vpncloud.sim.network import LinkParams


def test_packet_builders_parse_like_the_core() -> None:
    p4 = ipv4_packet("192.168.1.1", "192.168.1.2", b"abc")
    assert len(p4) == 23 and p4[0] == 0x45 and struct.unpack("!H", p4[2:4])[0] == 23
    assert _checksum(p4[:20]) == 0  # a valid header sums to 0xFFFF
    assert parse_packet(p4) == (bytes([192, 168, 1, 1]), bytes([192, 168, 1, 2]))
    p6 = ipv6_packet("fd00::1", "fd00::2", b"abcd")
    assert len(p6) == 44 and p6[0] >> 4 == 6 and struct.unpack("!H", p6[4:6])[0] == 4
    assert parse_packet(p6) == (
        ipaddress.ip_address("fd00::1").packed,
        ipaddress.ip_address("fd00::2").packed,
    )
    m1, m2 = mac("06:05:04:03:02:01"), mac("01:02:03:04:05:06")
    frame = ethernet_frame(m1, m2, b"x")
    assert parse_frame(frame) == (m2, m1)
    tagged = ethernet_frame(m1, m2, b"x", vlan=1234, pcp=7)
    assert tagged[12:16] == b"\x81\x00" + struct.pack("!H", (7 << 13) | 1234)
    # Spec 22.6: VLAN addresses are the VLAN id (PCP dropped) followed by the MAC.
    assert parse_frame(tagged) == (b"\x04\xd2" + m2, b"\x04\xd2" + m1)


def test_run_until_stops_when_condition_holds_or_at_deadline() -> None:
    h = Harness(seed=1)
    a, b = h.add_node(), h.add_node()
    assert not h.run_until(h.full_mesh, timeout=10)
    assert h.now == 10
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=10)
    assert 10 < h.now < 11.1  # the PONG answers the PING's first repetition (amplification budget)
    assert h.run_until(lambda: True, timeout=0)


def test_whole_runs_are_deterministic() -> None:
    def run(seed: int) -> list[tuple[float, bytes]]:
        h = Harness(seed=seed, link=LinkParams(drop=0.1, jitter=0.05))
        n1 = h.add_node()
        for _ in range(3):
            h.add_node(peers=[n1])
        h.run_until(h.full_mesh, timeout=200)
        return [(e.time, e.datagram.data) for e in h.net.trace]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_own_addresses_and_resolve_events_are_answered() -> None:
    h = Harness(seed=2)
    n1 = h.add_node()
    n2 = h.add_node()
    h.dns["hub.example:3210"] = [n1.addr]
    c = h.add_node(peers=["hub.example:3210"])
    assert h.run_until(lambda: h.connected(c, n1) and h.connected(n1, c), timeout=5)
    # The name moves to n2 and n1 goes away; the re-resolve 300 s after startup (spec 10.4) picks up
    # the new address and the back-off (16-s steps by then) connects c to n2.
    h.dns["hub.example:3210"] = [n2.addr]
    h.stop(n1)
    assert h.run_until(lambda: h.connected(c, n2), timeout=400)
    assert 300 <= h.now <= 300 + 16 + 1
    assert [t for t, e in c.events if isinstance(e, ResolvePeer)] == [300.0]
    assert c.events_of(PeerDisconnected)  # n1's CLOSE
    assert c.events_of(OwnAddressesDue)
    assert c.addr in c.node.own_addresses


def test_configured_peer_is_re_resolved_while_connected() -> None:
    h = Harness(seed=2)
    n1 = h.add_node()
    n2 = h.add_node()
    h.dns["hub.example:3210"] = [n1.addr]
    c = h.add_node(peers=["hub.example:3210"])
    assert h.run_until(lambda: h.connected(c, n1), timeout=5)
    h.dns["hub.example:3210"] = [n2.addr]
    h.run_for(302)
    assert c.events_of(ResolvePeer)


def test_graceful_stop_sends_close() -> None:
    h = Harness(seed=3)
    a, b = h.add_node(), h.add_node()
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    h.stop(b)
    h.run_for(1)
    assert not a.node.peers
    assert [e.node_id for e in a.events_of(PeerDisconnected)] == [b.node_id]
    assert not h.full_mesh([a, b]) and h.full_mesh()  # only alive nodes count by default
