"""The simulator's clock, event queue and network model, driven with trivial recording endpoints."""

from __future__ import annotations

import random

import pytest

from vpncloud.sim.network import (
    Datagram,
    DropNth,
    LinkParams,
    NatBox,
    NatKind,
    Network,
    Scheduler,
    canon,
    init_stage,
)

A = ("10.0.0.1", 3210)
B = ("10.0.0.2", 3210)
C = ("10.0.0.3", 3210)


class Box:
    """An endpoint that records what it receives: (time, data, source)."""

    def __init__(self) -> None:
        self.got: list[tuple[float, bytes, tuple[str, int]]] = []

    def __call__(self, data: bytes, src: tuple[str, int], now: float) -> None:
        self.got.append((now, data, src))


def make(seed: int = 1, default: LinkParams | None = None) -> tuple[Scheduler, Network]:
    sched = Scheduler()
    return sched, Network(sched, random.Random(seed), default=default)


# --- scheduler -------------------------------------------------------------------------------------


def test_scheduler_orders_by_time_then_fifo_and_skips_cancelled() -> None:
    sched = Scheduler(start=10.0)
    out: list[tuple[float, str]] = []
    sched.at(12.0, lambda: out.append((sched.now, "late")))
    sched.at(11.0, lambda: out.append((sched.now, "first")))
    sched.at(11.0, lambda: out.append((sched.now, "second")))
    t = sched.after(0.5, lambda: out.append((sched.now, "cancelled")))
    t.cancel()
    sched.at(5.0, lambda: out.append((sched.now, "past")))  # clamped to now: the past is not reachable
    sched.run_until(11.5)
    assert out == [(10.0, "past"), (11.0, "first"), (11.0, "second")]
    assert sched.now == 11.5
    assert len(sched) == 1
    sched.run_until(100.0)
    assert out[-1] == (12.0, "late")
    assert sched.step() is False


def test_events_scheduled_during_run_are_executed() -> None:
    sched = Scheduler()
    seen: list[float] = []

    def tick() -> None:
        seen.append(sched.now)
        if sched.now < 5:
            sched.after(1.0, tick)

    sched.at(0.0, tick)
    sched.run_until(100.0)
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


# --- plain delivery --------------------------------------------------------------------------------


def test_delivery_after_fixed_delay_with_mapped_source() -> None:
    sched, net = make(default=LinkParams(delay=0.25))
    a, b = Box(), Box()
    ep_a = net.attach(A, a)
    net.attach(B, b)
    assert ep_a.addr == ("::ffff:10.0.0.1", 3210)
    ep_a.send(b"hello", B)  # an unmapped destination is mapped like the core does
    sched.run_until(0.2)
    assert b.got == []
    sched.run_until(1.0)
    assert b.got == [(0.25, b"hello", ("::ffff:10.0.0.1", 3210))]
    assert [e.status for e in net.trace] == ["delivered"]
    assert net.delivered(sender=A, receiver=B)[0].datagram.data == b"hello"


def test_ipv6_endpoints_and_unroutable() -> None:
    sched, net = make()
    a, b = Box(), Box()
    ep_a = net.attach(("fd00::1", 3210), a)
    net.attach(("fd00:0:0::2", 3210), b)
    ep_a.send(b"x", ("fd00::2", 3210))
    ep_a.send(b"y", ("fd00::3", 3210))
    sched.run_until(1.0)
    assert b.got == [(pytest.approx(0.005), b"x", ("fd00::1", 3210))]
    assert net.stats["dropped:unroutable"] == 1


def test_detached_endpoint_drops_datagrams_in_flight() -> None:
    sched, net = make(default=LinkParams(delay=1.0))
    a, b = Box(), Box()
    ep_a = net.attach(A, a)
    net.attach(B, b)
    ep_a.send(b"x", B)
    net.detach(B)
    sched.run_until(2.0)
    assert b.got == [] and net.stats["dropped:unroutable"] == 1


def test_loss_rate_is_roughly_the_configured_probability() -> None:
    sched, net = make(seed=7, default=LinkParams(drop=0.3))
    b = Box()
    ep_a = net.attach(A, Box())
    net.attach(B, b)
    for i in range(2000):
        ep_a.send(i.to_bytes(2, "big"), B)
    sched.run_until(1.0)
    assert 1250 < len(b.got) < 1550
    assert net.stats["dropped:loss"] == 2000 - len(b.got)


def test_no_jitter_keeps_order_and_jitter_reorders() -> None:
    sched, net = make(seed=3)
    b, c = Box(), Box()
    ep_a = net.attach(A, Box())
    net.attach(B, b)
    net.attach(C, c)
    net.set_link(A, C, LinkParams(delay=0.01, jitter=0.5))
    for i in range(50):
        ep_a.send(bytes([i]), B)
        ep_a.send(bytes([i]), C)
        sched.run_until(sched.now + 0.01)
    sched.run_until(10.0)
    assert [d[0] for _, d, _ in b.got] == list(range(50))
    got_c = [d[0] for _, d, _ in c.got]
    assert sorted(got_c) == list(range(50)) and got_c != list(range(50))


def test_reorder_probability_holds_back_datagrams() -> None:
    sched, net = make(seed=5, default=LinkParams(delay=0.01, reorder=1.0, reorder_delay=1.0))
    b = Box()
    ep_a = net.attach(A, Box())
    net.attach(B, b)
    ep_a.send(b"1", B)
    net.default = LinkParams(delay=0.01)
    ep_a.send(b"2", B)
    sched.run_until(5.0)
    assert [d for _, d, _ in b.got] == [b"2", b"1"]


def test_duplication() -> None:
    sched, net = make(default=LinkParams(duplicate=1.0, jitter=0.1))
    b = Box()
    ep_a = net.attach(A, Box())
    net.attach(B, b)
    ep_a.send(b"dup", B)
    sched.run_until(1.0)
    assert [d for _, d, _ in b.got] == [b"dup", b"dup"]


def test_same_seed_same_trace() -> None:
    def run(seed: int) -> list[tuple[float, int, str]]:
        sched, net = make(seed=seed, default=LinkParams(drop=0.2, jitter=0.3, duplicate=0.1))
        ep_a = net.attach(A, Box())
        net.attach(B, Box())
        for i in range(100):
            ep_a.send(bytes([i]), B)
        sched.run_until(5.0)
        return [(e.time, e.datagram.seq, e.status) for e in net.trace]

    assert run(11) == run(11)
    assert run(11) != run(12)


# --- partitions and filters -------------------------------------------------------------------------


def test_partition_at_time_and_heal_at_time() -> None:
    sched, net = make(default=LinkParams(delay=0.5))
    b, c = Box(), Box()
    ep_a = net.attach(A, Box())
    net.attach(B, b)
    net.attach(C, c)
    net.partition([A, C], [B], at=10.0)
    net.heal(at=20.0)

    def send_all() -> None:
        ep_a.send(b"b", B)
        ep_a.send(b"c", C)

    for t in (5.0, 9.8, 15.0, 19.8, 25.0):
        sched.at(t, send_all)
    sched.run_until(30.0)
    # 9.8 is in flight when the cut comes at 10: lost; 19.8 is sent during the cut: lost as well.
    assert [t for t, _, _ in b.got] == [5.5, 25.5]
    assert [t for t, _, _ in c.got] == [5.5, 10.3, 15.5, 20.3, 25.5]
    assert net.stats["dropped:partition"] == 3


def test_drop_nth_filter_and_stage_classification() -> None:
    sched, net = make()
    b = Box()
    ep_a = net.attach(A, Box())
    net.attach(B, b)
    ping = b"\xff" + b"s" * 4 + b"h" * 4 + b"\x01\x00\x01\x01" + b"rest"
    pong = ping[:12] + b"\x02" + b"rest"
    assert init_stage(ping) == 1 and init_stage(pong) == 2
    assert init_stage(b"\x00" * 30) is None and init_stage(b"\xff") is None
    f = net.add_filter(DropNth(lambda d: d.stage == 1, n=2))
    for _ in range(3):
        ep_a.send(ping, B)
        ep_a.send(pong, B)
    sched.run_until(1.0)
    assert [init_stage(d) for _, d, _ in b.got] == [1, 2, 2, 1, 2]
    assert isinstance(f, DropNth) and len(f.dropped) == 1 and f.dropped[0].seq == 2
    assert isinstance(f.dropped[0], Datagram)
    net.remove_filter(f)
    ep_a.send(ping, B)
    sched.run_until(2.0)
    assert len(b.got) == 6


# --- NAT ---------------------------------------------------------------------------------------------

PUB = ("192.0.2.1", 3210)


def nat_setup(kind: NatKind, timeout: float = 300.0) -> tuple[Scheduler, Network, NatBox, dict[str, Box]]:
    sched, net = make()
    nat = NatBox("198.51.100.1", kind, timeout=timeout)
    boxes = {"in": Box(), "pub": Box(), "pub2": Box(), "pub3": Box()}
    net.attach(("192.168.1.2", 3210), boxes["in"], nat=nat)
    net.attach(PUB, boxes["pub"])
    net.attach(("192.0.2.1", 4000), boxes["pub2"])  # same host, other port
    net.attach(("192.0.2.9", 3210), boxes["pub3"])  # other host
    return sched, net, nat, boxes


def test_port_restricted_nat_mapping_filtering_and_timeout() -> None:
    sched, net, _, box = nat_setup(NatKind.PORT_RESTRICTED, timeout=300)
    inside = net.endpoints[canon(("192.168.1.2", 3210))]
    pub = net.endpoints[canon(PUB)]
    pub2 = net.endpoints[canon(("192.0.2.1", 4000))]
    ext = ("198.51.100.1", 40000)
    pub.send(b"unsolicited", ext)  # no mapping yet
    sched.run_until(1.0)
    inside.send(b"out", PUB)
    sched.run_until(2.0)
    assert box["pub"].got[0][2] == canon(ext)  # the public side sees the NAT's address
    pub.send(b"reply", box["pub"].got[0][2])
    pub2.send(b"other port", ext)  # same host, different port: filtered
    sched.run_until(3.0)
    assert [d for _, d, _ in box["in"].got] == [b"reply"]
    assert box["in"].got[0][2] == canon(PUB)
    # 300 s without outbound traffic: the permission and the mapping are gone
    sched.run_until(303.0)
    pub.send(b"too late", ext)
    sched.run_until(304.0)
    assert len(box["in"].got) == 1 and net.stats["dropped:nat"] == 3
    inside.send(b"again", PUB)
    sched.run_until(305.0)
    assert box["pub"].got[-1][2] == canon(("198.51.100.1", 40001))  # a fresh mapping, new port


def test_address_restricted_and_full_cone_filtering() -> None:
    for kind, expect in (
        (NatKind.ADDRESS_RESTRICTED, [b"reply", b"other port"]),
        (NatKind.FULL_CONE, [b"reply", b"other port", b"other host"]),
    ):
        sched, net, _, box = nat_setup(kind)
        inside = net.endpoints[canon(("192.168.1.2", 3210))]
        inside.send(b"out", PUB)
        sched.run_until(1.0)
        ext = box["pub"].got[0][2]
        net.endpoints[canon(PUB)].send(b"reply", ext)
        net.endpoints[canon(("192.0.2.1", 4000))].send(b"other port", ext)
        net.endpoints[canon(("192.0.2.9", 3210))].send(b"other host", ext)
        sched.run_until(2.0)
        assert [d for _, d, _ in box["in"].got] == expect, kind


def test_symmetric_nat_uses_a_port_per_destination() -> None:
    sched, net, nat, box = nat_setup(NatKind.SYMMETRIC)
    inside = net.endpoints[canon(("192.168.1.2", 3210))]
    inside.send(b"1", PUB)
    inside.send(b"2", ("192.0.2.9", 3210))
    sched.run_until(1.0)
    p1, p2 = box["pub"].got[0][2], box["pub3"].got[0][2]
    assert p1[0] == p2[0] == canon(("198.51.100.1", 0))[0] and p1[1] != p2[1]
    # The second server cannot use the port the first one saw.
    net.endpoints[canon(("192.0.2.9", 3210))].send(b"via p1", p1)
    net.endpoints[canon(("192.0.2.9", 3210))].send(b"via p2", p2)
    sched.run_until(2.0)
    assert [d for _, d, _ in box["in"].got] == [b"via p2"]
    assert len(nat.mappings()) == 2


def test_lan_endpoints_behind_one_nat_talk_directly() -> None:
    sched, net = make()
    nat = NatBox("198.51.100.1", NatKind.SYMMETRIC)
    a, b = Box(), Box()
    ep = net.attach(("192.168.1.2", 3210), a, nat=nat)
    net.attach(("192.168.1.3", 3210), b, nat=nat)
    ep.send(b"lan", ("192.168.1.3", 3210))
    sched.run_until(1.0)
    assert b.got[0][2] == canon(("192.168.1.2", 3210)) and nat.mappings() == []


@pytest.mark.parametrize(
    ("kind", "works"),
    [
        (NatKind.FULL_CONE, True),
        (NatKind.ADDRESS_RESTRICTED, True),
        (NatKind.PORT_RESTRICTED, True),
        (NatKind.SYMMETRIC, False),
    ],
)
def test_hole_punching_through_a_rendezvous_server(kind: NatKind, works: bool) -> None:
    """The textbook punch: both sides learn their public address from a server and send to each other."""
    sched, net = make()
    nat1 = NatBox("198.51.100.1", kind)
    nat2 = NatBox("203.0.113.1", kind)
    b1, b2, bs = Box(), Box(), Box()
    e1 = net.attach(("192.168.1.2", 3210), b1, nat=nat1)
    e2 = net.attach(("192.168.2.2", 3210), b2, nat=nat2)
    net.attach(PUB, bs)
    e1.send(b"hi", PUB)
    e2.send(b"hi", PUB)
    sched.run_until(1.0)
    seen1, seen2 = bs.got[0][2], bs.got[1][2]
    # Each sends to the address the server saw for the other; the first of the two may be filtered.
    e1.send(b"punch", seen2)
    e2.send(b"punch", seen1)
    sched.run_until(2.0)
    e1.send(b"data", seen2)
    e2.send(b"data", seen1)
    sched.run_until(3.0)
    assert (b"data" in [d for _, d, _ in b1.got]) is works
    assert (b"data" in [d for _, d, _ in b2.got]) is works


def test_preserve_port_firewall_keeps_addresses() -> None:
    """A NAT box whose public host is the inside host and that keeps ports is a stateful firewall."""
    sched, net = make()
    fw = NatBox("10.0.0.1", NatKind.PORT_RESTRICTED, timeout=300, preserve_port=True)
    a, b = Box(), Box()
    ep_a = net.attach(A, a, nat=fw)
    ep_b = net.attach(B, b)
    ep_b.send(b"blocked", A)
    sched.run_until(1.0)
    ep_a.send(b"out", B)
    sched.run_until(2.0)
    ep_b.send(b"allowed", A)
    sched.run_until(3.0)
    assert b.got == [(pytest.approx(1.005), b"out", canon(A))]
    assert [d for _, d, _ in a.got] == [b"allowed"]
    assert fw.mappings() == [(canon(A), 3210)]
