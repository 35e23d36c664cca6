"""ACLs in the core (vpncloud/core/acl.py) and their enforcement by Node on both paths."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpncloud.core.acl import AclPolicy, AclRule, parse_ip_packet
from vpncloud.core.errors import ConfigError
from vpncloud.core.types import DeviceType
from vpncloud.sim.harness import Harness, ethernet_frame, ipv4_packet, ipv6_packet

A, B, C = "10.99.0.1", "10.99.0.2", "10.99.0.3"


def net(*addrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(a) for a in addrs)


def tcp(src: str, dst: str, sport: int, dport: int, body: bytes = b"x") -> bytes:
    return ipv4_packet(
        src, dst, struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 1024, 0, 0) + body, 6
    )


def udp(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ipv4_packet(src, dst, struct.pack("!HHHH", sport, dport, 8, 0), 17)


def icmp(src: str, dst: str, itype: int, ident: int = 7, inner: bytes = b"") -> bytes:
    return ipv4_packet(src, dst, struct.pack("!BBHHH", itype, 0, 0, ident, 1) + inner, 1)


def ssh_policy() -> AclPolicy:
    return AclPolicy(
        (
            AclRule(net(A), net(B), "tcp", ((22, 22),), name="a to b ssh"),
            AclRule(net(A, B, C), net(A, B, C), "icmp"),
            AclRule(net(C), net(B), "udp", ((5000, 5100),)),
        )
    )


# --- parsing -----------------------------------------------------------------------------------


def test_parse_ipv4_tcp_udp_icmp() -> None:
    i = parse_ip_packet(tcp(A, B, 40000, 22))
    assert i is not None and (i.proto, i.sport, i.dport) == (6, 40000, 22)
    assert i.src == ipaddress.ip_address(A).packed and i.has_ports
    u = parse_ip_packet(udp(A, B, 1, 53))
    assert u is not None and (u.proto, u.dport) == (17, 53)
    e = parse_ip_packet(icmp(A, B, 8, ident=99))
    assert e is not None and (e.icmp_type, e.dport) == (8, 99)


def test_parse_ipv6_extension_and_fragment_headers() -> None:
    hop = bytes([6, 0]) + bytes(6)  # hop-by-hop, next = TCP
    p = ipv6_packet("fd00::1", "fd00::2", hop + struct.pack("!HH", 1234, 22) + bytes(16), next_header=0)
    i = parse_ip_packet(p)
    assert i is not None and (i.proto, i.sport, i.dport) == (6, 1234, 22)
    frag_later = bytes([17, 0]) + struct.pack("!HI", 8 << 3, 1)  # offset 8: not the first fragment
    p2 = ipv6_packet("fd00::1", "fd00::2", frag_later + bytes(8), next_header=44)
    j = parse_ip_packet(p2)
    assert j is not None and j.proto == 17 and not j.has_ports


@given(st.binary(max_size=120))
@settings(max_examples=500)
def test_parse_never_raises(data: bytes) -> None:
    parse_ip_packet(data)
    for outbound in (True, False):
        for frame in (True, False):
            ssh_policy().check(data, 0.0, outbound=outbound, frame=frame)


# --- decisions -----------------------------------------------------------------------------------


def test_allowed_connection_and_its_replies_pass() -> None:
    p = ssh_policy()
    assert p.check(tcp(A, B, 40000, 22), 0.0, outbound=True)
    assert p.check(tcp(B, A, 22, 40000), 1.0, outbound=False)  # reply
    assert p.check(tcp(A, B, 40000, 22), 2.0, outbound=True)
    assert p.counters.allowed_flow == 2 and p.counters.allowed_rule == 1


def test_denied_traffic() -> None:
    p = ssh_policy()
    assert not p.check(tcp(C, B, 40000, 22), 0.0, outbound=True)  # c -> b:22
    assert not p.check(tcp(A, B, 40000, 23), 0.0, outbound=True)  # other port
    assert not p.check(tcp(B, A, 22, 40000), 0.0, outbound=False)  # "reply" without a connection
    assert not p.check(tcp(B, A, 40001, 22), 0.0, outbound=True)  # b -> a:22 not allowed
    assert not p.check(udp(A, B, 1, 22), 0.0, outbound=True)  # wrong protocol
    assert p.check(udp(C, B, 1, 5050), 0.0, outbound=True)  # port range
    assert p.counters.denied_out == 4 and p.counters.denied_in == 1


def test_flows_expire_when_idle() -> None:
    p = ssh_policy()
    p.timeouts["tcp"] = 10.0
    assert p.check(tcp(A, B, 40000, 22), 0.0, outbound=True)
    assert p.check(tcp(B, A, 22, 40000), 9.0, outbound=False)  # refreshes to 19
    assert p.check(tcp(B, A, 22, 40000), 18.0, outbound=False)
    p.expire(50.0)
    assert p.flow_count == 0
    assert not p.check(tcp(B, A, 22, 40000), 50.0, outbound=False)


def test_flow_table_is_bounded() -> None:
    p = AclPolicy((AclRule(net("0.0.0.0/0"), net("0.0.0.0/0"), "udp"),), max_flows=100)
    for port in range(1000):
        assert p.check(udp(A, B, port, 53), 0.0, outbound=True)
    assert p.flow_count == 100 and p.counters.evicted_flows == 900


def test_icmp_echo_reply_and_errors_for_tracked_flows() -> None:
    p = AclPolicy((AclRule(net(A), net(B), "icmp"), AclRule(net(A), net(B), "udp", ((53, 53),))))
    assert p.check(icmp(A, B, 8, ident=5), 0.0, outbound=True)
    assert p.check(icmp(B, A, 0, ident=5), 0.0, outbound=False)
    assert not p.check(icmp(B, A, 0, ident=6), 0.0, outbound=False)
    assert not p.check(icmp(B, A, 8, ident=5), 0.0, outbound=False)  # b may not ping a
    q = udp(A, B, 3333, 53)
    assert p.check(q, 0.0, outbound=True)
    unreachable = icmp(B, A, 3, ident=0, inner=q[:28])
    assert p.check(unreachable, 0.0, outbound=False)
    stranger = icmp(B, A, 3, ident=0, inner=udp(A, B, 4444, 53)[:28])
    assert not p.check(stranger, 0.0, outbound=False)


def test_frames_non_ip_and_vlan() -> None:
    mac1, mac2 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    arp = ethernet_frame(mac2, mac1, bytes(28), ethertype=0x0806)
    p = ssh_policy()
    assert p.check(arp, 0.0, outbound=True, frame=True)
    strict = AclPolicy(p.rules, allow_non_ip=False)
    assert not strict.check(arp, 0.0, outbound=True, frame=True)
    ok = ethernet_frame(mac2, mac1, tcp(A, B, 1, 22), vlan=5)
    bad = ethernet_frame(mac2, mac1, tcp(C, B, 1, 22))
    assert p.check(ok, 0.0, outbound=True, frame=True)
    assert not p.check(bad, 0.0, outbound=True, frame=True)


def test_permits_for_policy_tests() -> None:
    p = ssh_policy()
    a, b, c = (ipaddress.ip_address(x).packed for x in (A, B, C))
    assert p.permits(a, b, "tcp", 22)
    assert not p.permits(a, b, "tcp", 80)
    assert p.permits(c, b)  # icmp / udp exist
    assert not p.permits(c, b, "tcp")


def test_serialised_round_trip_and_errors() -> None:
    p = ssh_policy()
    q = AclPolicy.from_dict(p.to_dict())
    assert q.rules == p.rules
    bad: list[object] = [
        [],
        {"rules": "x"},
        {"rules": [{"src": ["10.0.0.0/8"]}]},
        {"rules": [{"src": ["nonsense"], "dst": ["10.0.0.1"]}]},
        {"rules": [{"src": ["10.0.0.1"], "dst": ["10.0.0.1"], "proto": "tcp", "ports": ["70000"]}]},
        {"rules": [{"src": ["10.0.0.1"], "dst": ["10.0.0.1"], "proto": "icmp", "ports": [1]}]},
        {"rules": [{"src": ["10.0.0.1"], "dst": ["10.0.0.1"], "proto": "gre"}]},
        {"rules": [], "surprise": 1},
        {"rules": [], "timeouts": {"tcp": -1}},
        {"rules": [], "max_flows": 0},
    ]
    for data in bad:
        with pytest.raises(ConfigError):
            AclPolicy.from_dict(data)


# --- enforcement by Node, both directions ---------------------------------------------------------


def three_nodes(device_type: DeviceType = DeviceType.TUN) -> tuple[Harness, list]:  # type: ignore[type-arg]
    h = Harness(seed=31)
    nodes = [h.add_node(device_type=device_type) for _ in range(3)]
    h.run_for(0.5)
    for x in nodes:
        for y in nodes:
            if x is not y:
                h.connect(x, y)
    assert h.run_until(h.full_mesh, timeout=5)
    return h, nodes


def test_node_default_allows_everything() -> None:
    h, (a, b, c) = three_nodes()
    assert a.node.acl is None
    h.inject(c, tcp(C, B, 1, 22))
    h.run_for(0.5)
    assert b.device_payloads()[-1] == tcp(C, B, 1, 22)


def test_node_enforces_on_device_and_peer_paths() -> None:
    h, (a, b, c) = three_nodes()
    for n in (a, b):
        n.node.set_acl(ssh_policy())
    # a -> b:22 and the reply
    syn = tcp(A, B, 40000, 22)
    h.inject(a, syn)
    h.run_for(0.5)
    assert b.device_payloads()[-1] == syn
    ack = tcp(B, A, 22, 40000)
    h.inject(b, ack)
    h.run_for(0.5)
    assert a.device_payloads()[-1] == ack
    # c has no ACL (a misbehaving peer): b drops c -> b:22 when it arrives
    before = len(b.device_payloads())
    h.inject(c, tcp(C, B, 1, 22))
    h.run_for(0.5)
    assert len(b.device_payloads()) == before
    assert b.node.status(h.now)["security"]["acl"]["denied_in"] == 1
    # b -> a:22 (a new connection the policy does not allow) is dropped at b, before the tunnel
    h.inject(b, tcp(B, A, 40002, 22))
    assert b.node.status(h.now)["security"]["acl"]["denied_out"] == 1
    assert b.node.datagrams_to_send() == []
    h.run_for(0.5)
    assert a.device_payloads()[-1] == ack


def test_node_enforces_on_tap_frames() -> None:
    h = Harness(seed=32)
    a, b = h.add_node(device_type=DeviceType.TAP), h.add_node(device_type=DeviceType.TAP)
    h.run_for(0.5)
    h.connect(a, b)
    assert h.run_until(h.full_mesh, timeout=5)
    b.node.set_acl(ssh_policy())
    bad = ethernet_frame(b.mac, a.mac, tcp(C, B, 1, 22))
    good = ethernet_frame(b.mac, a.mac, tcp(A, B, 1, 22))
    h.inject(a, bad)
    h.inject(a, good)
    h.run_for(0.5)
    assert b.device_payloads() == [good]
