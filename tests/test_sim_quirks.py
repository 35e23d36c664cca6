"""Quirks of spec 25 that are visible on the wire, on the virtual network."""

from __future__ import annotations

from vpncloud.core.node import PeerDisconnected, PeerTimedOut
from vpncloud.sim.harness import Harness, SimNode
from vpncloud.sim.network import LinkParams


def pair(seed: int, link: LinkParams | None = None, **kw: object) -> tuple[Harness, SimNode, SimNode]:
    h = Harness(seed=seed, link=link)
    a = h.add_node(**kw)  # type: ignore[arg-type]
    b = h.add_node(**kw)  # type: ignore[arg-type]
    return h, a, b


def test_quirk5_no_empty_datagrams_sent_and_empty_ones_tolerated() -> None:
    h, a, b = pair(100)
    h.run_for(0.5)
    h.connect(a, b)
    h.connect(b, a)  # concurrent: the lower-hash PING is ignored, where the original sends 0 bytes
    assert h.run_until(h.full_mesh, timeout=5)
    assert all(e.datagram.data for e in h.net.trace)
    invalid = b.invalid_packets()
    h.deliver_raw(b, b"", a.addr)  # from the established peer
    h.deliver_raw(b, b"", ("10.0.0.77", 3210))  # from a stranger
    assert b.invalid_packets() == invalid + 2
    assert h.full_mesh()


def test_quirk6_short_frames_from_a_peer_are_rejected_not_fatal() -> None:
    h, a, b = pair(101)
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    invalid = b.invalid_packets()
    for n in (1, 10, 23):
        h.deliver_raw(b, b"\x00" * n, a.addr)  # crashed the 2.4.0 binary (1-23 bytes)
    assert b.invalid_packets() == invalid + 3
    p = h.send_packet(a, b, b"still fine")
    h.run_for(1)
    assert b.device_payloads() == [p]


def test_quirk8_plain_close_has_no_effect() -> None:
    h, a, b = pair(102, algorithms=(), plain_allowed=True)
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    h.stop(b)
    h.run_for(1)
    # The 1-byte CLOSE "ff" went out (spec 4.4) but a reads it as a broken init message.
    assert any(e.datagram.data == b"\xff" for e in h.net.trace)
    assert h.connected(a, b) and not a.events_of(PeerDisconnected)
    # a only forgets b by the peer timeout.
    assert h.run_until(lambda: not a.node.peers, timeout=400)
    assert a.events_of(PeerTimedOut)


def test_quirk17_stray_peng_does_not_disconnect() -> None:
    # The original's responder repeats its PONG every tick, so a answers a repeated PONG with a
    # second PENG, which reaches b after b finished its handshake and dropped the state (spec 6.8).
    # Ours repeats the PONG only when asked (issue 24), so the second PENG is replayed here.
    h, a, b = pair(103, LinkParams(delay=0.3))
    h.run_for(0.5)
    h.connect(a, b)
    h.run_for(5)
    pengs = [e for e in h.net.trace if e.datagram.stage == 3 and e.status == "delivered"]
    assert pengs and h.full_mesh()
    h.deliver_raw(b, bytes(pengs[0].datagram.data), a.addr)
    h.run_for(1)
    assert h.full_mesh()
    assert not b.events_of(PeerDisconnected) and not a.events_of(PeerDisconnected)
    p = h.send_packet(a, b, b"ok")
    h.run_for(1)
    assert b.device_payloads() == [p]
