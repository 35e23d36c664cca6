"""Two nodes behind NATs meet through a public node's peer list (hole punching)."""

from __future__ import annotations

import pytest

from vpncloud.sim.harness import Harness, SimNode
from vpncloud.sim.network import NatBox, NatKind, canon

NAT1, NAT2 = "198.51.100.1", "203.0.113.1"


def setup(kind: NatKind) -> tuple[Harness, SimNode, SimNode, SimNode]:
    h = Harness(seed=70)
    s = h.add_node("s", ("192.0.2.1", 3210))
    a = h.add_node("a", ("192.168.1.2", 3210), nat=NatBox(NAT1, kind), peers=[s])
    h.run_for(5)  # a is s's peer before b arrives, so s's PONG to b already lists a
    b = h.add_node("b", ("192.168.2.2", 3210), nat=NatBox(NAT2, kind), peers=[s])
    return h, s, a, b


@pytest.mark.parametrize("kind", [NatKind.PORT_RESTRICTED, NatKind.ADDRESS_RESTRICTED, NatKind.FULL_CONE])
def test_cone_nats_connect_directly(kind: NatKind) -> None:
    h, s, a, b = setup(kind)
    # b learns a's public address from s's PONG and pings it (filtered by NAT1 until a pings back);
    # a learns b's from s's next NODE_INFO (<= 90 s) and pings it: the PINGs cross, the holes open.
    assert h.run_until(lambda: h.connected(a, b) and h.connected(b, a), timeout=100)
    assert h.full_mesh()
    # (Full cone lets b's first PINGs through, so that may be long before s's first NODE_INFO.)
    h.run_for(max(2.0, 95 - h.now))
    # Own-address learning (spec 9.3): s's PEERS entries carrying a's own node id taught a its
    # public address, which a now publishes in its NODE_INFO.
    assert any(canon(x)[0] == canon((NAT1, 0))[0] for x in a.node.own_addresses)
    assert any(canon(x)[0] == canon((NAT2, 0))[0] for x in b.node.own_addresses)
    # The session is keyed by the other NAT's public address ...
    (a_peer_of_b,) = [k for k, p in a.node.peers.items() if p.node_id == b.node_id]
    assert a_peer_of_b[0] == canon((NAT2, 0))[0]
    # ... and payload goes directly between the two NATs, not through s.
    start = len(h.net.trace)
    p = h.send_packet(a, b, b"direct")
    q = h.send_packet(b, a, b"direct back")
    h.run_for(1)
    assert b.device_payloads()[-1] == p and a.device_payloads()[-1] == q
    new = [e for e in h.net.trace[start:] if e.status == "delivered"]
    pub1, pub2 = canon((NAT1, 0))[0], canon((NAT2, 0))[0]
    # DATA frames are the packet plus 25 bytes of session overhead (spec 4.3).
    data_a = [e for e in new if len(e.datagram.data) == len(p) + 25 and e.datagram.sender == a.addr]
    data_b = [e for e in new if len(e.datagram.data) == len(q) + 25 and e.datagram.sender == b.addr]
    assert [(e.datagram.src[0], e.datagram.dst[0], e.receiver) for e in data_a] == [(pub1, pub2, b.addr)]
    assert [(e.datagram.src[0], e.datagram.dst[0], e.receiver) for e in data_b] == [(pub2, pub1, a.addr)]
    assert s.device_payloads() == []
    # NODE_INFO every 90 s keeps the NAT permissions (300 s) open: still connected an hour later.
    h.run_for(3600)
    assert h.full_mesh()


def test_symmetric_nats_cannot_punch() -> None:
    """Documented limit: behind symmetric NATs the address s saw is valid only for traffic with s.
    a's and b's PINGs go to ports that were never mapped for each other and are filtered; vpncloud
    has no relay, so a and b stay unconnected (both stay connected to s)."""
    h, s, a, b = setup(NatKind.SYMMETRIC)
    h.run_for(600)
    assert h.connected(a, s) and h.connected(s, a) and h.connected(b, s) and h.connected(s, b)
    assert not h.connected(a, b) and not h.connected(b, a)
    # They did try: PINGs towards the other NAT were sent and dropped by it.
    tried = [
        e
        for e in h.net.trace
        if e.datagram.stage == 1 and e.datagram.sender in (a.addr, b.addr) and e.datagram.dst[0] != s.addr[0]
    ]
    assert tried and {e.status for e in tried} <= {"dropped:nat", "dropped:unroutable"}
    assert any(e.status == "dropped:nat" for e in tried)
    p = h.send_packet(a, b, b"nope")
    h.run_for(1)
    assert p not in b.device_payloads()
