"""Relays (issue 22) in the simulator: two nodes behind symmetric NATs reach each other through a
public node of ours, switch to a second relay when the first goes away, and move to a direct path
when one opens. An original-behaving node in the same mesh never receives a relay message."""

from __future__ import annotations

import logging

import pytest

from vpncloud.core.relay import RelayConfig, is_synthetic
from vpncloud.sim.harness import Harness, SimNode
from vpncloud.sim.network import NatBox, NatKind, canon

NAT_A, NAT_B, NAT_O = "198.51.100.1", "203.0.113.1", "198.51.100.9"


def nid(n: int) -> bytes:
    # Fixed ids: the lower id of a pair starts the relayed handshake, the lowest relay is chosen.
    return bytes([n]) * 16


def ours(h: Harness, name: str, addr: tuple[str, int], n: int, cfg: RelayConfig, **kw: object) -> SimNode:
    sn = h.add_node(name, addr, node_id=nid(n), **kw)  # type: ignore[arg-type]
    sn.node.enable_relays(cfg, h.now)
    return sn


def relayed_via(x: SimNode, y: SimNode) -> bytes | None:
    """The relay's node id if ``x`` has ``y`` as a relayed peer."""
    assert x.node.relay is not None
    for entry in x.node.relay.relayed():
        if entry["node_id"] == y.node_id.hex():
            return bytes.fromhex(entry["relay"])
    return None


def both_relayed(a: SimNode, b: SimNode, relay: SimNode) -> bool:
    return relayed_via(a, b) == relay.node_id and relayed_via(b, a) == relay.node_id


def direct(x: SimNode, y: SimNode) -> bool:
    return any(p.node_id == y.node_id and not is_synthetic(k) for k, p in x.node.peers.items())


def build(at_once: bool = False) -> tuple[Harness, SimNode, SimNode, SimNode, SimNode, SimNode]:
    h = Harness(seed=22)
    relay = RelayConfig(offer=True, use=True)
    end = RelayConfig(use=True, at_once=at_once)
    r1 = ours(h, "r1", ("192.0.2.1", 3210), 0x10, relay)
    r2 = ours(h, "r2", ("192.0.2.2", 3210), 0x11, relay)
    # o behaves like the original: no relay capability, behind a symmetric NAT too, so a and b
    # would want to reach it through a relay.
    o = h.add_node("o", ("192.168.9.2", 3210), node_id=nid(0x03), nat=NatBox(NAT_O, NatKind.SYMMETRIC))
    a = ours(h, "a", ("192.168.1.2", 3210), 0x01, end, nat=NatBox(NAT_A, NatKind.SYMMETRIC))
    b = ours(h, "b", ("192.168.2.2", 3210), 0x02, end, nat=NatBox(NAT_B, NatKind.SYMMETRIC))
    h.add_configured_peer(r2, r1)
    for sn in (o, a, b):
        h.add_configured_peer(sn, r1)
        h.add_configured_peer(sn, r2)
    return h, r1, r2, o, a, b


def exchange(h: Harness, a: SimNode, b: SimNode, text: bytes) -> None:
    p = h.send_packet(a, b, text)
    q = h.send_packet(b, a, text + b" back")
    h.run_for(1)
    assert b.device_payloads()[-1] == p
    assert a.device_payloads()[-1] == q


def no_direct_datagrams(h: Harness, start: int) -> bool:
    ends = {canon((NAT_A, 0))[0], canon((NAT_B, 0))[0]}
    return not any(
        e.status == "delivered" and e.datagram.src[0] in ends and e.datagram.dst[0] in ends
        for e in h.net.trace[start:]
    )


def test_symmetric_nats_connect_through_relay_then_second_relay_then_direct() -> None:
    h, r1, r2, o, a, b = build()
    assert h.run_until(lambda: both_relayed(a, b, r1), timeout=300)
    assert not direct(a, b) and not direct(b, a)
    start = len(h.net.trace)
    before = dict(r1.node.relay.counters) if r1.node.relay else {}
    exchange(h, a, b, b"through r1")
    assert r1.node.relay is not None
    assert r1.node.relay.counters["forwarded_packets"] >= before["forwarded_packets"] + 2
    assert r1.device_payloads() == [] and r2.device_payloads() == []
    assert no_direct_datagrams(h, start)
    # The relay only sees ciphertext: the payload is nowhere in what it received.
    assert not any(b"through r1" in e.datagram.data for e in h.net.trace[start:])

    # r1 goes away: the ends pick r2.
    h.stop(r1)
    assert h.run_until(lambda: both_relayed(a, b, r2), timeout=400)
    exchange(h, a, b, b"through r2")
    assert r2.node.relay is not None and r2.node.relay.counters["forwarded_packets"] > 0

    # A direct path opens (a port forward on b's NAT that b advertises): the ends move to it.
    nat_b = b.endpoint.nat
    assert nat_b is not None
    nat_b.forward(3210, b.addr)
    b.config.advertise_addresses = [canon((NAT_B, 3210))]
    b.node.set_own_addresses([b.addr])
    assert h.run_until(lambda: direct(a, b) and direct(b, a) and relayed_via(a, b) is None, timeout=400)
    assert h.run_until(lambda: relayed_via(b, a) is None, timeout=5)
    assert a.node.relay is not None and a.node.relay.moved_direct == 1
    forwarded = r2.node.relay.counters["forwarded_packets"]
    start = len(h.net.trace)
    exchange(h, a, b, b"direct")
    assert r2.node.relay.counters["forwarded_packets"] == forwarded
    assert not no_direct_datagrams(h, start)

    # The original-behaving node: never got a relay message (it would count an unknown message
    # type as invalid), and the relays refused to forward to it.
    assert o.invalid_packets() == 0
    assert o.node.relay is None
    assert r2.node.relay.counters["not_capable"] > 0
    assert not h.connected(a, o) and not h.connected(o, a)
    # Its NODE_INFO is the original's: no features part at all (0x56 part).
    assert o.node._node_info_bytes() == o.node._node_info().encode()


def test_relays_off_behave_as_before() -> None:
    """Without enable_relays nothing changes: symmetric NATs still cannot meet (test_sim_nat)."""
    h = Harness(seed=22)
    s = h.add_node("s", ("192.0.2.1", 3210))
    a = h.add_node("a", ("192.168.1.2", 3210), nat=NatBox(NAT_A, NatKind.SYMMETRIC), peers=[s])
    b = h.add_node("b", ("192.168.2.2", 3210), nat=NatBox(NAT_B, NatKind.SYMMETRIC), peers=[s])
    h.run_for(300)
    assert h.connected(a, s) and h.connected(b, s)
    assert not h.connected(a, b)
    assert all(not is_synthetic(k) for n in (s, a, b) for k in list(n.node.peers) + list(n.node.pending))


def test_plan_knowledge_goes_through_a_relay_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """With ``at_once`` (the plan knows hole punching fails) the ends are relayed from the first
    seconds; without, they wait ``direct_grace`` (20 s) for the direct attempt first."""
    h, r1, _r2, _o, a, b = build(at_once=True)
    assert h.run_until(lambda: both_relayed(a, b, r1), timeout=5)
    exchange(h, a, b, b"at once")
    # direct is still tried now and then (docs/relays.md), so a later port forward is found
    assert a.node.relay is not None and a.node.relay._next_direct
    # the direct attempts to b's NAT are still retransmitted; they give up only after 120 ticks
    # (spec 6.7), and that changes nothing for the relayed session
    to_b = [k for k in a.node.pending if k[0] == canon((NAT_B, 0))[0]]
    assert to_b, a.node.pending
    with caplog.at_level(logging.INFO, logger="vpncloud"):
        assert h.run_until(lambda: not any(k in a.node.pending for k in to_b), timeout=130)
    gave_up = [line for line in caplog.text.splitlines() if "Closing pending connection to" in line]
    assert any(NAT_B in line and "(Initialization timeout)" in line for line in gave_up), gave_up
    assert both_relayed(a, b, r1)
    exchange(h, a, b, b"still relayed")

    h, r1, _r2, _o, a, b = build(at_once=False)
    h.run_for(15)
    assert relayed_via(a, b) is None and relayed_via(b, a) is None
    assert h.run_until(lambda: both_relayed(a, b, r1), timeout=60)
    assert h.now > 20


@pytest.mark.parametrize("lost", ["b", "a"])
def test_a_relay_that_lost_the_far_end_says_so_and_the_ends_take_another(
    caplog: pytest.LogCaptureFixture, lost: str
) -> None:
    """r1 loses b (the link between them is cut; r1 is then connected to a only). a's next relayed
    datagram is answered "no route" and a goes through r2 at once, long before its own timeout of the
    relayed session (``peer_timeout``) would have noticed. The same when a, the end with the lower
    node id (the one that normally starts relayed handshakes), is lost: b starts it then."""
    h, r1, r2, o, a, b = build(at_once=True)
    r1.config.peer_timeout = 30  # r1 forgets the lost end soon; the ends keep 300 s
    for sn in (r1, r2, o, a, b):
        sn.config.keepalive = 10  # as the namespace tests (default: 90 s)
    assert h.run_until(lambda: both_relayed(a, b, r1), timeout=5)
    if lost == "a":
        a, b = b, a
    inside = {r1.addr[0], b.addr[0]}
    outside = {r1.addr[0], canon((NAT_B if lost == "b" else NAT_A, 0))[0]}
    h.net.add_filter(lambda dg: {dg.sender[0], dg.dst[0]} in (inside, outside))
    start = h.now
    with caplog.at_level(logging.INFO, logger="vpncloud.relay"):
        assert h.run_until(lambda: both_relayed(a, b, r2), timeout=a.config.peer_timeout)
    assert h.now - start < a.config.peer_timeout / 2
    assert r1.node.relay is not None and r1.node.relay.counters["refusals_sent"] >= 1
    assert a.node.relay is not None and a.node.relay.counters["refusals_received"] >= 1
    assert f"has no session with peer {b.node_id.hex()[:8]}: trying relay 11111111" in caplog.text
    exchange(h, a, b, b"through r2")
    # b's stale session through r1 went when the one through r2 came
    assert [e["relay"] for e in b.node.relay.relayed()] == [r2.node_id.hex()] if b.node.relay else False


def test_at_once_for_listed_peers_only() -> None:
    """``at_once`` naming b: a reaches b through the relay at once, while c, another NAT peer of a
    that is not listed, still waits ``direct_grace`` (20 s) for the direct attempt."""
    h = Harness(seed=23)
    r1 = ours(h, "r1", ("192.0.2.1", 3210), 0x10, RelayConfig(offer=True, use=True))
    a = ours(h, "a", ("192.168.1.2", 3210), 0x01, RelayConfig(use=True, at_once=frozenset({nid(0x02)})),
             nat=NatBox(NAT_A, NatKind.SYMMETRIC))  # fmt: skip
    b = ours(h, "b", ("192.168.2.2", 3210), 0x02, RelayConfig(use=True), nat=NatBox(NAT_B, NatKind.SYMMETRIC))
    c = ours(h, "c", ("192.168.3.2", 3210), 0x03, RelayConfig(use=True), nat=NatBox(NAT_O, NatKind.SYMMETRIC))
    for sn in (a, b, c):
        h.add_configured_peer(sn, r1)
    # a has the lower node id of both pairs, so it alone decides when each relayed handshake starts
    assert h.run_until(lambda: both_relayed(a, b, r1), timeout=5)
    h.run_for(15 - h.now)
    assert relayed_via(a, c) is None and relayed_via(c, a) is None
    assert h.run_until(lambda: both_relayed(a, c, r1), timeout=60)
    assert h.now > 20
    assert a.node.status(h.now)["relay"]["at_once"] == [nid(0x02).hex()]
