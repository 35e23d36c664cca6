"""Forwarding on the virtual network: switch learning and timeout, hub, router claims, VLANs."""

from __future__ import annotations

from vpncloud.core.node import NodeConfig
from vpncloud.core.types import DeviceType, Mode, Range
from vpncloud.sim.harness import Harness, SimNode, ethernet_frame, ipv4_packet, ipv6_packet


def mesh(h: Harness, nodes: list[SimNode]) -> None:
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    h.run_for(1)


def got(h: Harness, nodes: list[SimNode], frame: bytes) -> list[str]:
    """Names of the nodes whose device received ``frame`` (as their latest packet)."""
    h.run_for(0.5)
    return [n.name for n in nodes if n.device and n.device[-1][1] == frame]


def test_switch_learning_and_switch_timeout() -> None:
    h = Harness(seed=80)
    ns = [
        h.add_node(config=NodeConfig(device_type=DeviceType.TAP, mode=Mode.SWITCH, switch_timeout=30))
        for _ in range(3)
    ]
    mesh(h, ns)
    n1, n2, n3 = ns
    f1 = ethernet_frame(n2.mac, n1.mac, b"who are you")
    h.inject(n1, f1)
    assert got(h, ns, f1) == ["n2", "n3"]  # n2's MAC is unknown: broadcast
    r1 = ethernet_frame(n1.mac, n2.mac, b"n2 here")
    h.inject(n2, r1)
    assert got(h, ns, r1) == ["n1"]  # n2 learned n1's MAC from f1
    f2 = ethernet_frame(n2.mac, n1.mac, b"unicast now")
    h.inject(n1, f2)
    assert got(h, ns, f2) == ["n2"]
    # Learned entries live switch-timeout (30 s) after the last frame from that source.
    h.run_for(31)
    r2 = ethernet_frame(n1.mac, n2.mac, b"forgotten?")
    h.inject(n2, r2)
    assert got(h, ns, r2) == ["n1", "n3"]
    # A broadcast destination is never learned (it is never a source): always flooded.
    bc = ethernet_frame(b"\xff" * 6, n3.mac, b"arp")
    h.inject(n3, bc)
    assert got(h, ns, bc) == ["n1", "n2"]


def test_hub_broadcasts_everything() -> None:
    h = Harness(seed=81)
    ns = [h.add_node(device_type=DeviceType.TAP, mode=Mode.HUB) for _ in range(3)]
    mesh(h, ns)
    n1, n2, _ = ns
    for i in range(3):
        f = ethernet_frame(n2.mac, n1.mac, bytes([i]))
        h.inject(n1, f)
        assert got(h, ns, f) == ["n2", "n3"]
        r = ethernet_frame(n1.mac, n2.mac, bytes([i]))
        h.inject(n2, r)
        assert got(h, ns, r) == ["n1", "n3"]  # no learning in hub mode
    assert all(not n.node.table.cache() or all(len(a) != 6 for a, _, _ in n.node.table.cache()) for n in ns)


def test_router_longest_prefix_wins() -> None:
    h = Harness(seed=82)
    src = h.add_node(mode=Mode.ROUTER, claims=[Range.parse("10.0.0.1/32")])
    wide = h.add_node("wide", addr=("10.0.0.2", 3210), mode=Mode.ROUTER, claims=[Range.parse("10.1.0.0/16")])
    mid = h.add_node("mid", addr=("10.0.0.3", 3210), mode=Mode.ROUTER, claims=[Range.parse("10.1.2.0/24")])
    host = h.add_node(
        "host",
        addr=("10.0.0.4", 3210),
        mode=Mode.ROUTER,
        claims=[Range.parse("10.1.2.3/32"), Range.parse("fd00:1::/64")],
    )
    v6 = h.add_node("v6", addr=("10.0.0.5", 3210), mode=Mode.ROUTER, claims=[Range.parse("fd00::/16")])
    ns = [src, wide, mid, host, v6]
    mesh(h, ns)
    cases = [
        ("10.1.2.3", ["host"]),
        ("10.1.2.4", ["mid"]),
        ("10.1.9.9", ["wide"]),
        ("10.2.0.1", []),
    ]
    for dst, expect in cases:
        p = ipv4_packet("10.0.0.1", dst, dst.encode())
        h.inject(src, p)
        assert got(h, ns, p) == expect, dst
    for dst, expect in (("fd00:1::7", ["host"]), ("fd00:2::7", ["v6"]), ("fe80::1", [])):
        p = ipv6_packet("fd00:9::1", dst, dst.encode())
        h.inject(src, p)
        assert got(h, ns, p) == expect, dst
    assert src.dropped_payload_packets() == 2


def test_vlans_are_separate_address_spaces() -> None:
    h = Harness(seed=83)
    ns = [h.add_node(device_type=DeviceType.TAP) for _ in range(3)]  # normal TAP = switch
    mesh(h, ns)
    n1, n2, _ = ns
    f = ethernet_frame(n2.mac, n1.mac, b"v10", vlan=10)
    h.inject(n1, f)
    assert got(h, ns, f) == ["n2", "n3"]
    # n1's MAC was learned on VLAN 10 only: untagged and VLAN 20 replies to it are still flooded.
    for vlan in (None, 20):
        r = ethernet_frame(n1.mac, n2.mac, b"other vlan", vlan=vlan)
        h.inject(n2, r)
        assert got(h, ns, r) == ["n1", "n3"], vlan
    r = ethernet_frame(n1.mac, n2.mac, b"same vlan", vlan=10, pcp=5)  # PCP bits are not part of the id
    h.inject(n2, r)
    assert got(h, ns, r) == ["n1"]
