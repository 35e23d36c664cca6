"""Two nodes on the virtual network: handshake directions, lost messages, rejected impostors."""

from __future__ import annotations

import pytest

from vpncloud.core.node import PeerConnected, PeerDisconnected
from vpncloud.sim.harness import Harness, SimNode
from vpncloud.sim.network import Datagram, DropNth

# Spec 6.3 sizes with 3 algorithms and a 59-byte NODE_INFO (one claim, one own address): P = 59 + 24.
PING, PONG, PENG, ROTATION_1 = 155, 158 + 83, 105 + 83, 67


def pair(seed: int, **kw: object) -> tuple[Harness, SimNode, SimNode]:
    h = Harness(seed=seed)
    a = h.add_node(**kw)  # type: ignore[arg-type]
    b = h.add_node(**kw)  # type: ignore[arg-type]
    return h, a, b


def wire(h: Harness) -> list[tuple[str, int]]:
    """Delivered datagrams as (direction, size), e.g. ("n1>n2", 155)."""
    names = {n.addr: n.name for n in h.nodes}
    return [
        (f"{names[e.datagram.sender]}>{names[e.receiver]}", len(e.datagram.data))  # type: ignore[index]
        for e in h.net.trace
        if e.status == "delivered"
    ]


def exchange_works(h: Harness, a: SimNode, b: SimNode) -> None:
    p1 = h.send_packet(a, b, b"a to b")
    p2 = h.send_packet(b, a, b"b to a")
    h.run_for(1)
    assert b.device_payloads()[-1] == p1 and a.device_payloads()[-1] == p2


@pytest.mark.parametrize("direction", ["a->b", "b->a"])
def test_handshake_one_way(direction: str) -> None:
    h, a, b = pair(seed=20)
    init, resp = (a, b) if direction == "a->b" else (b, a)
    # The first tick coincides with the connect and would repeat the PING at once (spec 6.7); start
    # half-way between ticks to see the bare exchange.
    h.run_for(0.5)
    h.connect(init, resp)
    assert h.run_until(h.full_mesh, timeout=3)
    h.run_for(0.3)
    i, r = init.name, resp.name
    # The amplification budget (guard.py, issue 24): the PONG is larger than the PING, so it answers
    # the PING's first repetition, one tick later.
    assert wire(h) == [
        (f"{i}>{r}", PING),
        (f"{i}>{r}", PING),
        (f"{r}>{i}", PONG),
        (f"{i}>{r}", PENG),
        (f"{r}>{i}", ROTATION_1),
    ]
    # Roles (spec 6.8): the handshake initiator does not start the key rotation.
    assert next(iter(init.node.peers.values())).crypto.handshake_initiator is True
    assert next(iter(resp.node.peers.values())).crypto.handshake_initiator is False
    assert [type(e) for e in init.events_of(PeerConnected)] == [PeerConnected]
    exchange_works(h, a, b)


def test_handshake_concurrent() -> None:
    h, a, b = pair(seed=21)
    h.run_for(0.5)
    h.connect(a, b)
    h.connect(b, a)
    assert h.run_until(h.full_mesh, timeout=5)
    h.run_for(3)
    # One session per side, one side initiator (the higher salted hash, spec 6.4), same algorithm.
    assert len(a.node.peers) == len(b.node.peers) == 1 and not a.node.pending and not b.node.pending
    pa, pb = next(iter(a.node.peers.values())), next(iter(b.node.peers.values()))
    assert {pa.crypto.handshake_initiator, pb.crypto.handshake_initiator} == {True, False}
    assert pa.crypto.algorithm is pb.crypto.algorithm
    exchange_works(h, a, b)


@pytest.mark.parametrize("stage", [1, 2, 3], ids=["PING", "PONG", "PENG"])
def test_handshake_message_lost_once(stage: int) -> None:
    h, a, b = pair(seed=22 + stage)
    lost = DropNth(lambda d: d.stage == stage)
    h.net.add_filter(lost)
    h.run_for(0.5)
    h.connect(a, b)
    assert h.run_until(lambda: h.full_mesh() and not b.node.pending, timeout=10)
    assert len(lost.dropped) == 1
    # Recovery needs the next retransmission tick (1 s later at most), plus one for the budget.
    assert 1.0 <= h.now <= 4.0
    exchange_works(h, a, b)


def test_wrong_key_never_connects() -> None:
    h = Harness(seed=30)
    a = h.add_node(password="test123")
    b = h.add_node(password="something else")
    h.connect(a, b)
    h.run_for(300)
    assert h.connected_pairs() == set()
    # Every PING (one per tick until the handshake gives up after 120 retries) was untrusted at b.
    pings = [e for e in h.net.delivered(sender=a.addr) if e.datagram.stage == 1]
    assert 100 <= len(pings) <= 125
    assert b.invalid_packets() == len(pings)
    assert not b.node.pending and not b.node.peers
    # a gives up after 120 ticks (spec 6.7) and reports the failed connection attempt.
    assert not a.node.pending
    gave_up = [t for t, e in a.events if isinstance(e, PeerDisconnected)]
    assert len(gave_up) == 1 and 119 <= gave_up[0] <= 123


def test_tampered_ping_rejected_then_genuine_accepted() -> None:
    h, a, b = pair(seed=31)
    held: list[Datagram] = []

    def tamper_first_pings(d: Datagram) -> bool:
        if d.stage == 1 and d.sent_at < 3:
            held.append(d)
            # Spec 22.5: flip one bit at offset 10 of the PING body (after the 0xFF).
            data = bytearray(d.data)
            data[11] ^= 0x01
            h.sched.after(0.005, h.deliver_raw, b, bytes(data), d.src)
            return True
        return False

    h.net.add_filter(tamper_first_pings)
    h.connect(a, b)
    h.run_for(2.9)
    assert len(held) >= 3 and b.invalid_packets() == len(held)
    assert not b.node.pending and h.connected_pairs() == set()
    assert h.run_until(h.full_mesh, timeout=3)
    assert b.invalid_packets() == len(held)


def test_tampered_data_rejected_session_continues() -> None:
    h, a, b = pair(seed=32)
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    h.run_for(1)
    before = b.invalid_packets()
    flipped: list[int] = []

    def flip_data(d: Datagram) -> bool:
        if d.sender == a.addr and d.stage is None and not flipped:
            for offset in (0, 1, 8):  # slot byte, nonce byte, first ciphertext byte (spec 22.4)
                data = bytearray(d.data)
                data[offset] ^= 0x01
                h.sched.after(0.005, h.deliver_raw, b, bytes(data), d.src)
                flipped.append(offset)
        return False  # the genuine copy still goes through

    h.net.add_filter(flip_data)
    packet = h.send_packet(a, b, b"payload")
    h.run_for(1)
    assert flipped == [0, 1, 8]
    assert b.device_payloads() == [packet]
    assert b.invalid_packets() - before == 3
    exchange_works(h, a, b)


def test_own_ping_reflected_is_rejected() -> None:
    h = Harness(seed=33)
    a = h.add_node()
    mirror = ("10.0.0.99", 3210)

    def reflect(data: bytes, src: tuple[str, int], now: float) -> None:
        ep.send(data, src)

    ep = h.net.attach(mirror, reflect)
    h.run_for(0.5)
    h.connect(a, mirror)
    h.run_for(1)
    # The reflected PING carries a's own salted hash: "Connected to self" (spec 6.4), fatal.
    assert not a.node.pending and not a.node.peers
    assert [e.addr for e in a.events_of(PeerDisconnected)] == [("10.0.0.99", 3210)]
    assert a.invalid_packets() >= 1
    # Nothing retries it (it was not a configured peer).
    h.run_for(200)
    assert ep.received == 1 and not a.node.pending


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_peer_restart_at_same_address_replaces_session(initiator: str) -> None:
    """b crashes and comes back (new node id, same address). If a initiated the first handshake it
    still keeps that handshake's state for ~61 ticks (spec 6.8) and answers the new PINGs with its old
    PENG (spec 4.2 step 2, 6.4), so the new session only starts once that state is gone, like the
    original; otherwise it starts at once. Either way the entry is replaced, not duplicated."""
    h, a, b = pair(seed=34)
    h.connect(a, b) if initiator == "a" else h.connect(b, a)
    assert h.run_until(h.full_mesh, timeout=5)
    h.run_for(10)
    h.stop(b, graceful=False)
    h.run_for(10)
    b2 = h.add_node("b2", addr=b.addr, peers=[a])
    assert h.run_until(lambda: h.connected(a, b2) and h.connected(b2, a), timeout=100)
    if initiator == "a":
        assert 60 <= h.now <= 63
    else:
        assert h.now < 21
    assert [p.node_id for p in a.node.peers.values()] == [b2.node_id]
    exchange_works(h, a, b2)
