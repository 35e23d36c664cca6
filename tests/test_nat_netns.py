"""NAT traversal with real namespaces, real iptables NAT and real daemons (spec 9.3, 10.2, 10.5).

Topology ("internet" = 10.240.0.0/24)::

    A 10.241.1.2 -- rA (MASQUERADE) 10.240.0.1 --+
    B 10.242.1.2 -- rB (MASQUERADE) 10.240.0.2 --+-- pub 10.240.0.10
                                                  +
A and B know only ``pub``. ``pub`` learns their NATed addresses from their datagrams and passes them
on in its NODE_INFO peer lists; A and B then send handshakes to each other's NATed address at about
the same time, which opens both NATs (hole punching), and they talk directly.

The checks look at the UDP path itself, not just at pings: the peer addresses in ``status --json``,
conntrack entries of the routers, and iptables counters of UDP forwarded between the two routers.

With ``--random-fully`` (port-randomising, in practice symmetric NAT) the external port seen by
``pub`` is useless to anybody else, so A and B can never connect directly: the test documents that
limit and what a user sees of it (log and status).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from reach_support import VpnNode, behind, conntrack_udp, home_firewall, nat_router, wait_for

from vpncloud.lab.netns import Netns, Topology

pytestmark = pytest.mark.netns

PUB = "10.240.0.10"
RA_WAN, RB_WAN = "10.240.0.1", "10.240.0.2"
A_LAN, B_LAN = "10.241.1.2", "10.242.1.2"
VPN = {"pub": "10.99.2.10", "a": "10.99.2.1", "b": "10.99.2.2"}


@dataclass
class NatWorld:
    topo: Topology
    ra: Netns
    rb: Netns
    a: Netns
    b: Netns
    pub: Netns
    nodes: dict[str, VpnNode]


def _build(topology: Topology, workdir: Path, *, random_fully: bool) -> NatWorld:
    wan = topology.switch("wan")
    lan_a = topology.switch("lana")
    lan_b = topology.switch("lanb")
    ra = nat_router(topology, "ra", lan_a, wan, "10.241.1.1/24", f"{RA_WAN}/24", random_fully=random_fully)
    rb = nat_router(topology, "rb", lan_b, wan, "10.242.1.1/24", f"{RB_WAN}/24", random_fully=random_fully)
    a = behind(topology, "a", lan_a, f"{A_LAN}/24", "10.241.1.1")
    b = behind(topology, "b", lan_b, f"{B_LAN}/24", "10.242.1.1")
    pub = topology.namespace("pub")
    topology.plug(pub, wan)
    pub.add_addr("eth0", f"{PUB}/24")
    pub.add_default_route("eth0")
    # The routers drop unsolicited inbound traffic like a home router does (see home_firewall).
    for rt in (ra, rb):
        home_firewall(rt)
    # counting rules (no target): UDP forwarded between the two routers' WAN addresses
    ra.iptables("-I", "FORWARD", "-i", "wan0", "-s", RB_WAN, "-p", "udp")
    rb.iptables("-I", "FORWARD", "-i", "wan0", "-s", RA_WAN, "-p", "udp")
    common = ["--no-port-forwarding", "--keepalive", "10"]
    nodes = {
        "pub": VpnNode(topology, pub, workdir, "pub", "--ip", f"{VPN['pub']}/24", *common),
        "a": VpnNode(topology, a, workdir, "a", "--ip", f"{VPN['a']}/24", "-c", f"{PUB}:3210", *common),
        "b": VpnNode(topology, b, workdir, "b", "--ip", f"{VPN['b']}/24", "-c", f"{PUB}:3210", *common),
    }
    for node in nodes.values():
        node.wait_running()
    return NatWorld(topology, ra, rb, a, b, pub, nodes)


def _forwarded_udp(rt: Netns, src: str) -> int:
    """Packets counted by the counting rule for UDP from ``src`` entering over the WAN."""
    out = rt.run(["iptables", "-L", "FORWARD", "-n", "-v", "-x"]).stdout
    for line in out.splitlines():
        cols = line.split()
        # pkts bytes target prot opt in out source destination  (no target -> column shift)
        if len(cols) >= 8 and cols[2] in ("udp", "17") and src in cols:
            return int(cols[0])
    raise AssertionError(f"counting rule for {src} not found:\n{out}")


def test_nated_nodes_talk_directly(topology: Topology, tmp_path: Path) -> None:
    w = _build(topology, tmp_path, random_fully=False)
    a, b = w.nodes["a"], w.nodes["b"]
    # A sees B under B's router's WAN address and vice versa: a direct session, not via pub
    ok = wait_for(lambda: f"{RB_WAN}:3210" in a.peer_addrs() and f"{RA_WAN}:3210" in b.peer_addrs(), 40)
    assert ok, f"A peers {a.peer_addrs()}, B peers {b.peer_addrs()}\nA log:\n{a.log_text()}"
    # both learned their own public address from pub's peer list (spec 9.3/10.5)
    assert wait_for(lambda: f"{RA_WAN}:3210" in (a.status() or {}).get("own_addresses", []), 20)
    # the routers track a direct UDP flow between the two NATed nodes
    assert any(f"dst={RB_WAN}" in line and "dport=3210" in line for line in conntrack_udp(w.ra)), (
        conntrack_udp(w.ra)
    )
    # VPN traffic A -> B takes that path: the counter of UDP from rB entering rA grows with pings
    before = _forwarded_udp(w.ra, RB_WAN)
    assert wait_for(lambda: w.a.ping(VPN["b"], count=1, timeout=1), 20)
    assert w.a.ping(VPN["b"], count=5, timeout=1)
    after = _forwarded_udp(w.ra, RB_WAN)
    assert after - before >= 5, (before, after)
    # and B reaches A the same way
    before_b = _forwarded_udp(w.rb, RA_WAN)
    assert w.b.ping(VPN["a"], count=5, timeout=1)
    assert _forwarded_udp(w.rb, RA_WAN) - before_b >= 5
    for node in w.nodes.values():
        assert node.stop() == 0


@pytest.mark.timeout(400)
def test_symmetric_nat_limit(topology: Topology, tmp_path: Path) -> None:
    """Port-randomising NAT on both sides: A and B keep their sessions to pub, never to each other.

    What the user sees: pub reports both peers under random external ports; A and B attempt
    handshakes to the address pub gave them, which never complete ("Closing pending connection
    ... " in the log, the address listed under ``pending`` while it is tried) and are not peers.
    """
    w = _build(topology, tmp_path, random_fully=True)
    a, b, pub = w.nodes["a"], w.nodes["b"], w.nodes["pub"]
    assert wait_for(lambda: len(pub.peers()) == 2, 30), pub.status()
    pub_view = {p["addr"] for p in pub.peers()}
    hosts = {addr.rsplit(":", 1)[0] for addr in pub_view}
    assert hosts == {RA_WAN, RB_WAN}
    # the NAT picked random ports (with overwhelming probability not 3210 for both)
    assert pub_view != {f"{RA_WAN}:3210", f"{RB_WAN}:3210"}, pub_view
    b_seen_by_pub = next(addr for addr in pub_view if addr.startswith(RB_WAN))
    # A is told about B and tries the useless address; the attempt is visible and then given up
    tried = wait_for(
        lambda: (
            b_seen_by_pub in (a.status() or {}).get("pending", []) or f"to {b_seen_by_pub}" in a.log_text()
        ),
        30,
    )
    assert tried, f"A never tried {b_seen_by_pub}:\n{a.log_text()}"

    def gave_up() -> bool:
        # no direct session forms at any point while the handshake is retransmitted every tick;
        # after 120 ticks it is given up (spec 6.7) and the log names the address and the reason
        assert {p["addr"] for p in a.peers()} == {f"{PUB}:3210"}, a.peers()
        assert {p["addr"] for p in b.peers()} == {f"{PUB}:3210"}, b.peers()
        return f"Closing pending connection to {b_seen_by_pub}" in a.log_text()

    assert wait_for(gave_up, 150, 1.0), a.log_text()
    assert _forwarded_udp(w.ra, RB_WAN) == 0  # nothing from B ever got through A's NAT
    assert "Initialization timeout" in a.log_text()
    # VPN traffic A -> B cannot flow: pub does not relay in normal mode
    assert not w.a.ping(VPN["b"], count=2, timeout=1)
    for node in w.nodes.values():
        assert node.stop() == 0


def test_lan_peers_prefer_the_lan_address(topology: Topology, tmp_path: Path) -> None:
    """LAN awareness (ours, the original lacks it): two nodes behind the same router.

    The router forwards UDP 3210 of its WAN address to B, with hairpin NAT so that LAN hosts can use
    the public address too (what home routers with port forwarding do). A is configured with B's
    public address, so its first session runs through the router. B's NODE_INFO lists B's LAN
    address, which is in A's own LAN: A must then talk to B over the LAN (claims routed to the LAN
    session), and VPN traffic must stop taking the hairpin through the router.

    Fails with the original's behaviour (a peer's own ADDRS never trigger a connect, spec 9.3),
    which is what the change in vpncloud/core/node.py described in the issue report fixes.
    """
    wan = topology.switch("wan")
    lan = topology.switch("lan")
    wan_ip, a_ip, b_ip = "10.246.0.1", "10.245.1.2", "10.245.1.3"
    rt = nat_router(topology, "rt", lan, wan, "10.245.1.1/24", f"{wan_ip}/24")
    rt.iptables(
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        wan_ip,
        "-p",
        "udp",
        "--dport",
        "3210",
        "-j",
        "DNAT",
        "--to-destination",
        f"{b_ip}:3210",
    )
    rt.iptables(
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.245.1.0/24",
        "-d",
        b_ip,
        "-p",
        "udp",
        "--dport",
        "3210",
        "-j",
        "MASQUERADE",
    )
    rt.iptables("-I", "FORWARD", "-i", "lan0", "-o", "lan0", "-p", "udp")  # counts hairpin traffic
    a_ns = behind(topology, "a", lan, f"{a_ip}/24", "10.245.1.1")
    b_ns = behind(topology, "b", lan, f"{b_ip}/24", "10.245.1.1")
    common = ["--no-port-forwarding", "--keepalive", "5"]
    a = VpnNode(topology, a_ns, tmp_path, "a", "--ip", "10.99.5.1/24", "-c", f"{wan_ip}:3210", *common)
    b = VpnNode(topology, b_ns, tmp_path, "b", "--ip", "10.99.5.2/24", *common)
    a.wait_running()
    b.wait_running()
    # the configured (public, hairpinned) path works at all
    assert wait_for(lambda: any(p["claims"] == ["10.99.5.2/32"] for p in a.peers()), 30), a.log_text()

    def claim_peer() -> str | None:
        st = a.status() or {}
        for entry in st.get("table", {}).get("claims", []):
            if entry["range"] == "10.99.5.2/32":
                return str(entry["peer"])
        return None

    # A routes B's claim over the LAN session
    assert wait_for(lambda: claim_peer() == f"{b_ip}:3210", 30), (claim_peer(), a.peers())
    assert wait_for(lambda: a_ns.ping("10.99.5.2"), 10)
    before = _hairpin(rt)
    assert a_ns.ping("10.99.5.2", count=5, timeout=1)
    assert _hairpin(rt) - before < 5, "VPN traffic still takes the hairpin through the router"
    assert a.stop() == 0 and b.stop() == 0


def _hairpin(rt: Netns) -> int:
    out = rt.run(["iptables", "-L", "FORWARD", "-n", "-v", "-x"]).stdout
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 8 and cols[2] in ("udp", "17") and cols[4] == "lan0" and cols[5] == "lan0":
            return int(cols[0])
    raise AssertionError(out)
