"""Spec 22.9's node simulations, on the virtual network with 1-s ticks and password ``test123``."""

from __future__ import annotations

import pytest

from vpncloud.core.node import NodeConfig, PeerTimedOut
from vpncloud.core.primitives import Algorithm
from vpncloud.core.types import DeviceType, Mode, Range, parse_address
from vpncloud.sim.harness import Harness, SimNode, ethernet_frame, ipv4_packet
from vpncloud.sim.network import DropNth, NatBox, NatKind


def tap_pair(h: Harness, **kw: object) -> tuple[SimNode, SimNode]:
    a = h.add_node(device_type=DeviceType.TAP, **kw)  # type: ignore[arg-type]
    b = h.add_node(device_type=DeviceType.TAP, **kw)  # type: ignore[arg-type]
    return a, b


def algorithm_of(a: SimNode, b: SimNode) -> Algorithm | None:
    return next(p.crypto.algorithm for p in a.node.peers.values() if p.node_id == b.node_id)


def test_two_tap_nodes_connect() -> None:
    h = Harness(seed=1)
    a, b = tap_pair(h)
    h.connect(a, b)
    assert not h.full_mesh()
    assert h.run_until(h.full_mesh, timeout=5)
    assert algorithm_of(a, b) is algorithm_of(b, a) is Algorithm.AES128  # spec 22.5 row 1 speeds


def test_two_tap_nodes_connect_plain() -> None:
    h = Harness(seed=2)
    a, b = tap_pair(h, algorithms=(), plain_allowed=True)
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    assert algorithm_of(a, b) is algorithm_of(b, a) is Algorithm.PLAIN
    frame = h.send_packet(a, b, b"plain")
    h.run_for(1)
    assert b.device_payloads() == [frame]
    # Unencrypted DATA on the wire is the type byte 0 followed by the frame (spec 4.4).
    assert any(e.datagram.data == b"\x00" + frame for e in h.net.delivered(sender=a.addr))


def test_three_nodes_peer_exchange_within_120s() -> None:
    h = Harness(seed=3)
    n1, n2, n3 = (h.add_node(device_type=DeviceType.TAP) for _ in range(3))
    h.connect(n1, n2)
    h.connect(n1, n3)
    h.run_for(5)
    assert h.connected_pairs() == {("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")}
    # n2 and n3 only learn of each other from n1's NODE_INFO broadcast, every 90 s (spec 9.6).
    assert h.run_until(h.full_mesh, timeout=115)
    assert 90 <= h.now <= 120


def test_beacon_store_and_load() -> None:
    h = Harness(seed=4)
    n1 = h.add_node(config=NodeConfig(device_type=DeviceType.TAP, beacon_store=True))
    h.run_for(100)
    assert "beacon" in h.files and h.nodes == [n1]
    n2 = h.add_node(config=NodeConfig(device_type=DeviceType.TAP, beacon_load=True))
    assert n2.node.configured_peers() == [] and not n2.node.pending
    assert h.run_until(lambda: h.connected(n2, n1) and h.connected(n1, n2), timeout=5)
    # first load at the first tick after start (strict compare, spec 15.6), + one tick for the PONG budget
    assert h.now <= 103


def test_reconnect_after_timeout() -> None:
    """Peers silent for 300 s are dropped on both sides; the immediate new handshake reconnects."""
    h = Harness(seed=5)
    a, b = tap_pair(h)
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    h.net.partition([a.addr], [b.addr])
    cut = h.now
    assert h.run_until(lambda: not a.node.peers and not b.node.peers, timeout=500)
    # The last NODE_INFO arrived at most 90 s before the cut, the timeout is 300 s after it.
    assert cut + 300 - 90 <= h.now <= cut + 300 + 1
    assert a.events_of(PeerTimedOut) and b.events_of(PeerTimedOut)
    # Both sides already retransmit PINGs to each other (spec 10.3); healing the cut is enough.
    assert a.node.pending and b.node.pending
    h.net.heal()
    assert h.run_until(h.full_mesh, timeout=5)


@pytest.mark.parametrize("stage", [1, 2, 3], ids=["PING", "PONG", "PENG"])
def test_lost_handshake_message_recovered(stage: int) -> None:
    h = Harness(seed=10 + stage)
    a, b = tap_pair(h)
    # Drop every copy of this message for 5 s, so recovery needs the retransmission ticks.
    lost = h.net.add_filter(DropNth(lambda d: d.stage == stage and d.sent_at < 5, count=100))
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=120)
    assert isinstance(lost, DropNth) and len(lost.dropped) >= 3
    assert h.now >= 5
    frame = h.send_packet(a, b, b"after")
    h.run_for(1)
    assert b.device_payloads() == [frame]


def firewall(host: str) -> NatBox:
    """Spec 22.9's NAT: no translation, inbound only from addresses sent to within 300 s."""
    return NatBox(host, NatKind.PORT_RESTRICTED, timeout=300, preserve_port=True)


def test_nat_mutual_connect() -> None:
    h = Harness(seed=6)
    a = h.add_node(addr=("10.0.0.1", 3210), nat=firewall("10.0.0.1"), device_type=DeviceType.TAP)
    b = h.add_node(addr=("10.0.0.2", 3210), nat=firewall("10.0.0.2"), device_type=DeviceType.TAP)
    # One-sided attempts are filtered out ...
    h.connect(a, b.addr)
    h.run_for(10)
    assert not h.connected(a, b) and h.net.stats["dropped:nat"] > 0
    # ... mutual ones punch through.
    h.connect(b, a.addr)
    assert h.run_until(h.full_mesh, timeout=60)


def test_nat_three_nodes_pairwise_via_node1_full_mesh_and_kept() -> None:
    h = Harness(seed=7)
    ns = [
        h.add_node(addr=(f"10.0.0.{i}", 3210), nat=firewall(f"10.0.0.{i}"), device_type=DeviceType.TAP)
        for i in (1, 2, 3)
    ]
    n1, n2, n3 = ns
    for other in (n2, n3):
        h.connect(n1, other.addr)
        h.connect(other, n1.addr)
    h.run_for(300)
    assert h.full_mesh()
    # NODE_INFO every 90 s keeps both the sessions (300-s timeout) and the NAT permissions alive.
    h.run_for(700)
    assert h.full_mesh()
    h.run_for(9000)
    assert h.full_mesh()
    assert not any(n.events_of(PeerTimedOut) for n in ns)


def test_switch_learning_three_nodes_and_vlans() -> None:
    h = Harness(seed=8)
    n1, n2, n3 = (h.add_node(device_type=DeviceType.TAP) for _ in range(3))
    h.connect(n1, n2)
    h.connect(n1, n3)
    h.connect(n2, n3)
    assert h.run_until(h.full_mesh, timeout=5)
    m1, m2 = b"\x01" * 6, b"\x02" * 6

    frame = m2 + m1 + bytes([1, 2, 3, 4, 5])
    h.inject(n1, frame)
    h.run_for(1)
    assert n2.device_payloads() == [frame] and n3.device_payloads() == [frame]  # unknown: broadcast
    reply = m1 + m2 + bytes([1, 2, 3, 4, 5])
    h.inject(n2, reply)
    h.run_for(1)
    assert n1.device_payloads() == [reply] and n3.device_payloads() == [frame]  # learned: n1 only

    # VLAN 0x67: the same, in its own address space.
    vframe = ethernet_frame(m2, m1, bytes([1, 2, 3, 4, 5]), ethertype=0x0800, vlan=0x67)
    h.inject(n1, vframe)
    h.run_for(1)
    assert n2.device_payloads()[-1] == vframe and n3.device_payloads()[-1] == vframe
    vreply = ethernet_frame(m1, m2, b"r", vlan=0x67)
    h.inject(n2, vreply)
    h.run_for(1)
    assert n1.device_payloads()[-1] == vreply and vreply not in n3.device_payloads()
    # A reply on VLAN 0x68 does not match what was learned on VLAN 0x67: broadcast.
    other = ethernet_frame(m1, m2, b"o", vlan=0x68)
    h.inject(n2, other)
    h.run_for(1)
    assert n1.device_payloads()[-1] == other and n3.device_payloads()[-1] == other


def test_router_claims() -> None:
    h = Harness(seed=9)
    n1 = h.add_node(mode=Mode.ROUTER, claims=[Range.parse("1.1.1.1/32")])
    n2 = h.add_node(mode=Mode.ROUTER, claims=[Range.parse("2.2.2.2/32")])
    h.connect(n1, n2)
    assert h.run_until(h.full_mesh, timeout=5)
    ok = ipv4_packet("1.1.1.1", "2.2.2.2", b"x")
    lost = ipv4_packet("1.1.1.1", "3.3.3.3", b"y")
    h.inject(n1, ok)
    h.inject(n1, lost)
    h.run_for(1)
    assert n2.device_payloads() == [ok]
    assert n1.dropped_payload_packets() == 1
    assert parse_address("2.2.2.2") in {r.base for r, _ in n1.node.remote_claims()}


def test_ipv6_underlay_peer_exchange() -> None:
    h = Harness(seed=12)
    n1 = h.add_node(addr=("fd00::1", 3210))
    n2 = h.add_node(addr=("fd00::2", 3210), peers=[n1])
    n3 = h.add_node(addr=("fd00::3", 3210), peers=[n1])
    assert h.run_until(h.full_mesh, timeout=100)
    assert set(n2.node.peers) == {("fd00::1", 3210), ("fd00::3", 3210)}
    p = h.send_packet(n3, n2, b"v6 underlay")
    h.run_for(1)
    assert n2.device_payloads() == [p]
