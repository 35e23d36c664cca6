"""Replayed, duplicated and reordered DATA inside and outside the replay window (spec 7.4).

Nodes start at t=0 and tick at whole seconds. A frame received at t=10.3 is the newest seen; the tick
at 11 moves ``next_min_nonce`` past it and the tick at 12 makes that the minimum, so copies are
accepted until the second tick after the original and rejected from then on ("1-2 ticks").
"""

from __future__ import annotations

import pytest

from vpncloud.sim.harness import Harness, SimNode
from vpncloud.sim.network import Datagram, LinkParams


def connected_pair(seed: int, link: LinkParams | None = None) -> tuple[Harness, SimNode, SimNode]:
    h = Harness(seed=seed, link=link)
    a, b = h.add_node(), h.add_node()
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    h.run_for(10 - h.now)  # settle; the clock is now at a whole second
    return h, a, b


def capture_data(h: Harness, a: SimNode, size: int, hold: bool) -> list[Datagram]:
    """Record (and with ``hold`` swallow) a's DATA frames of the given packet size."""
    seen: list[Datagram] = []

    def f(d: Datagram) -> bool:
        if d.sender == a.addr and d.stage is None and len(d.data) == size + 25:
            seen.append(d)
            return hold
        return False

    h.net.add_filter(f)
    return seen


def test_replayed_data_accepted_within_window_then_rejected() -> None:
    h, a, b = connected_pair(90)
    frames = capture_data(h, a, 21, hold=False)
    h.run_for(0.3)
    p = h.send_packet(a, b, b"x")
    h.run_for(0.1)
    assert b.device_payloads() == [p] and len(frames) == 1
    invalid = b.invalid_packets()
    replay = frames[0].data
    # Quirk 16: exact duplicates are accepted (and written to the device again) inside the window.
    for at in (10.45, 11.5, 12.5, 20.0):
        h.run_for(at - h.now)
        h.deliver_raw(b, replay, a.addr)
    h.run_for(1)
    assert b.device_payloads() == [p, p, p]
    assert b.invalid_packets() - invalid == 2
    # The session is unaffected.
    q = h.send_packet(a, b, b"y")
    h.run_for(0.1)
    assert b.device_payloads()[-1] == q


@pytest.mark.parametrize(("late", "accepted"), [(0.2, True), (1.2, True), (2.2, False), (5.0, False)])
def test_reordered_data(late: float, accepted: bool) -> None:
    h, a, b = connected_pair(91)
    held = capture_data(h, a, 22, hold=True)
    h.run_for(0.3)
    p1 = h.send_packet(a, b, b"p1")
    h.net.filters.clear()
    p2 = h.send_packet(a, b, b"p2")
    h.run_for(0.1)
    assert b.device_payloads() == [p2] and len(held) == 1
    invalid = b.invalid_packets()
    h.run_for(late - 0.1)
    h.deliver_raw(b, held[0].data, a.addr)
    h.run_for(0.1)
    if accepted:
        assert b.device_payloads() == [p2, p1] and b.invalid_packets() == invalid
    else:
        assert b.device_payloads() == [p2] and b.invalid_packets() == invalid + 1


@pytest.mark.parametrize(("reorder_delay", "rejected"), [(0.5, False), (3.0, True)])
def test_reordering_link_with_steady_traffic(reorder_delay: float, rejected: bool) -> None:
    """20 % of frames are held back: by 0.5 s (inside the window: all delivered, out of order) or by
    3 s (outside: exactly the held-back frames are rejected and counted invalid)."""
    link = LinkParams(delay=0.01, reorder=0.2, reorder_delay=reorder_delay)
    # (seed 92 held back the very last frame, which no newer one overtakes, so it was accepted
    # correctly; the handshake one tick later (amplification budget) had shifted the draws)
    h, a, b = connected_pair(94, link)
    invalid = b.invalid_packets()
    h.net.trace.clear()
    sent = []
    for i in range(600):
        sent.append(h.send_packet(a, b, i.to_bytes(2, "big")))
        h.run_for(0.1)
    h.run_for(5)
    frames = [e for e in h.net.trace if e.datagram.sender == a.addr and len(e.datagram.data) == 22 + 25]
    late = [e for e in frames if e.time - e.datagram.sent_at > 0.4]
    assert 80 < len(late) < 160
    got = b.device_payloads()
    assert got != sent  # reordered
    if rejected:
        assert len(got) == 600 - len(late) and b.invalid_packets() - invalid == len(late)
        assert len(set(sent) - set(got)) == len(late)
    else:
        assert sorted(got) == sorted(sent) and b.invalid_packets() == invalid


def test_duplicating_link_duplicates_reach_the_device() -> None:
    """Quirk 16 end to end: a link that duplicates datagrams makes the device see duplicates."""
    h, a, b = connected_pair(93, LinkParams(delay=0.01, jitter=0.05, duplicate=0.25))
    h.net.trace.clear()
    for i in range(200):
        h.send_packet(a, b, i.to_bytes(2, "big"))
        h.run_for(0.5)
    h.run_for(2)
    delivered = [e for e in h.net.delivered(sender=a.addr) if len(e.datagram.data) == 22 + 25]
    assert 230 < len(delivered) < 270
    assert len(b.device_payloads()) == len(delivered)
