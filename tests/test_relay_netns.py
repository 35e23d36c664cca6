"""Relays (issue 22) with real namespaces, real iptables NAT and real daemons.

Topology ("internet" = 10.240.0.0/24)::

    A 10.241.1.2 -- rA (MASQUERADE --random-fully) 10.240.0.1 --+-- pub1 10.240.0.10
    B 10.242.1.2 -- rB (MASQUERADE --random-fully) 10.240.0.2 --+-- pub2 10.240.0.11

Port-randomising NAT on both sides: A and B can never punch a hole to each other (see
test_nat_netns.test_symmetric_nat_limit). With a ``relay`` section in their security files (pub1
and pub2 offer, A and B use), they reach each other through one of the public nodes; the relay's
capture holds no plaintext; when that relay stops the other takes over; when rB gets a port forward
that B advertises, A and B move to the direct path.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reach_support import VpnNode, behind, home_firewall, nat_router, wait_for

from vpncloud.core.relay import RelayConfig
from vpncloud.lab.dot import lab_dot
from vpncloud.lab.lab import LabStatus, NodeStatus, PeerStatus
from vpncloud.lab.netns import Netns, Topology
from vpncloud.mesh.fleet import HostFacts
from vpncloud.mesh.keystore import Keystore
from vpncloud.mesh.loader import load_mesh_text
from vpncloud.mesh.plan import plan_warnings
from vpncloud.mesh.status import fleet_mesh_status

pytestmark = pytest.mark.netns

PUB1, PUB2 = "10.240.0.10", "10.240.0.11"
RA_WAN, RB_WAN = "10.240.0.1", "10.240.0.2"
A_LAN, B_LAN = "10.241.1.2", "10.242.1.2"
VPN = {"pub1": "10.99.3.10", "pub2": "10.99.3.11", "a": "10.99.3.1", "b": "10.99.3.2"}
#: ping -p pattern: what must never show up in the relay's capture
PATTERN = "5265c4a79e11d00d"


@dataclass
class RelayWorld:
    topo: Topology
    ns: dict[str, Netns]
    nodes: dict[str, VpnNode]


def _build(
    topology: Topology,
    workdir: Path,
    *extra: str,
    at_once: bool = False,
    pub_args: tuple[str, ...] = (),
    a_args: tuple[str, ...] = (),
) -> RelayWorld:
    wan = topology.switch("wan")
    lan_a = topology.switch("lana")
    lan_b = topology.switch("lanb")
    ra = nat_router(topology, "ra", lan_a, wan, "10.241.1.1/24", f"{RA_WAN}/24", random_fully=True)
    rb = nat_router(topology, "rb", lan_b, wan, "10.242.1.1/24", f"{RB_WAN}/24", random_fully=True)
    for rt in (ra, rb):
        home_firewall(rt)
    ns = {
        "ra": ra,
        "rb": rb,
        "a": behind(topology, "a", lan_a, f"{A_LAN}/24", "10.241.1.1"),
        "b": behind(topology, "b", lan_b, f"{B_LAN}/24", "10.242.1.1"),
    }
    for name, addr in (("pub1", PUB1), ("pub2", PUB2)):
        pub = ns[name] = topology.namespace(name)
        topology.plug(pub, wan)
        pub.add_addr("eth0", f"{addr}/24")
        pub.add_default_route("eth0")
    offer = workdir / "offer.security.yaml"
    offer.write_text("relay: {offer: true, use: true}\n")
    use = workdir / "use.security.yaml"
    use.write_text("relay: {use: true, at_once: true}\n" if at_once else "relay: {use: true}\n")
    common = ["--no-port-forwarding", "--keepalive", "10", *extra]
    peers = ["-c", f"{PUB1}:3210", "-c", f"{PUB2}:3210"]

    def node(name: str, sec: Path, *args: str) -> VpnNode:
        return VpnNode(
            topology,
            ns[name],
            workdir,
            name,
            "--ip",
            f"{VPN[name]}/24",
            "--security-file",
            str(sec),
            *common,
            *args,
        )

    nodes = {
        "pub1": node("pub1", offer, *pub_args),
        "pub2": node("pub2", offer, "-c", f"{PUB1}:3210", *pub_args),
        "a": node("a", use, *peers, *a_args),
        # B advertises the address a port forward will give it later (useless until then)
        "b": node(
            "b",
            use,
            *peers,
            "--advertise_addresses",
            f"{RB_WAN}:3210",
        ),
    }
    for n in nodes.values():
        n.wait_running()
    return RelayWorld(topology, ns, nodes)


def _relay_of(node: VpnNode, other: VpnNode) -> str | None:
    """Node id of the relay through which ``node`` has ``other`` as a peer (None if not relayed)."""
    st, ot = node.status(), other.status()
    if not st or not ot or not st.get("relay"):
        return None
    for entry in st["relay"]["relayed_peers"]:
        if entry["node_id"] == ot["node_id"]:
            return str(entry["relay"])
    return None


def _node_id(node: VpnNode) -> str:
    st = node.status()
    assert st is not None
    return str(st["node_id"])


MESH = f"""\
mesh: {{name: relays, vpn_network: 10.99.3.0/24}}
nodes:
  - {{name: pub1, host: pub1, underlay: {PUB1}, vpn_address: {VPN["pub1"]}}}
  - {{name: pub2, host: pub2, underlay: {PUB2}, vpn_address: {VPN["pub2"]}}}
  - {{name: a, host: a, behind_nat: true, vpn_address: {VPN["a"]}}}
  - {{name: b, host: b, behind_nat: true, vpn_address: {VPN["b"]}}}
"""


def _mesh_views_show_the_relay(w: RelayWorld, relay: str, tmp_path: Path) -> None:
    """`vpncloud status MESH` and the DOT picture, fed with the daemons' real `status --json`."""
    statuses = {name: node.status() or {} for name, node in w.nodes.items()}
    facts = {n: HostFacts(host=n, reachable=True, node=n, status=st) for n, st in statuses.items()}
    status = fleet_mesh_status(load_mesh_text(MESH), Keystore(tmp_path / "keys"), facts)
    assert status.relayed == {"a": {"b": relay}, "b": {"a": relay}}, statuses
    # the plan's path for this pair (both public nodes relay by default): either relay may carry it
    plan_paths = [w.message for w in plan_warnings(load_mesh_text(MESH)) if w.kind == "relay-path"]
    assert plan_paths == ["a ↔ b via pub1 or pub2 (both behind NAT: when hole punching fails)"]
    names = {st["node_id"]: n for n, st in statuses.items()}
    lab_nodes = [
        NodeStatus(
            name=n,
            namespace=n,
            pid=1,
            running=True,
            underlay="-",
            node_id=st["node_id"],
            peers=[PeerStatus(addr=p["addr"], name=names.get(p["node_id"])) for p in st["peers"]],
            daemon=st,
        )
        for n, st in statuses.items()
    ]
    dot = lab_dot(LabStatus(name="relays", state_dir="-", whole=True, nodes=lab_nodes))
    assert f'"a" -- "b" [color=blue, style=dotted, fontcolor=blue, label="via {relay}"];' in dot, dot


def _direct(node: VpnNode, other_addr: str) -> bool:
    return other_addr in node.peer_addrs()


TCP_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1)
c, _ = s.accept(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    n += len(d)
c.sendall(str(n).encode()); c.close()
"""
TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5001), timeout=60)
c.sendall(bytes(1_000_000)); c.shutdown(socket.SHUT_WR)
print(c.recv(100).decode())
"""


def _tcp_transfer(w: RelayWorld) -> str:
    server = w.topo.spawn(w.ns["b"], [sys.executable, "-c", TCP_SERVER, VPN["b"]])
    try:
        ok = wait_for(
            lambda: w.ns["b"].run(["ss", "-ltn"], check=False).stdout.find(f"{VPN['b']}:5001") >= 0, 10
        )
        assert ok
        res = w.ns["a"].run([sys.executable, "-c", TCP_CLIENT, VPN["b"]], check=False, timeout=90)
        return res.stdout.strip() or res.stderr[-2000:]
    finally:
        server.kill()
        server.wait()


def _capture(w: RelayWorld, relay: str, path: Path) -> subprocess.Popen[bytes]:
    log = path.with_suffix(".log")
    proc = w.topo.spawn(
        w.ns[relay],
        ["tcpdump", "-i", "eth0", "-U", "-w", str(path), "udp"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    assert wait_for(lambda: "listening on" in log.read_text(errors="replace"), 10), log.read_text()
    return proc


@pytest.mark.timeout(600)
def test_symmetric_nats_relay_failover_and_direct(topology: Topology, tmp_path: Path) -> None:
    w = _build(topology, tmp_path)
    a, b = w.nodes["a"], w.nodes["b"]
    ids = {name: _node_id(w.nodes[name]) for name in ("pub1", "pub2")}
    # the relay with the lower node id is chosen
    first = min(ids, key=lambda k: ids[k])
    second = "pub2" if first == "pub1" else "pub1"
    relayed = wait_for(lambda: _relay_of(a, b) == ids[first] and _relay_of(b, a) == ids[first], 120, 1.0)
    assert relayed, f"A: {a.status()}\nA log:\n{a.log_text()}"
    _mesh_views_show_the_relay(w, first, tmp_path)

    # ping and a TCP transfer through the relay; the relay's capture has no plaintext
    pcap = tmp_path / "relay.pcap"
    dump = _capture(w, first, pcap)
    assert wait_for(lambda: w.ns["a"].ping(VPN["b"], count=1, timeout=1), 20)
    res = w.ns["a"].run(["ping", "-c", "5", "-i", "0.2", "-p", PATTERN, VPN["b"]], check=False)
    assert res.returncode == 0, res.stdout
    assert _tcp_transfer(w) == "1000000"
    dump.terminate()
    dump.wait()
    captured = pcap.read_bytes()
    assert len(captured) > 1_000_000  # the transfer went through this relay ...
    assert bytes.fromhex(PATTERN) not in captured  # ... and it saw none of it in the clear
    st: dict[str, Any] = w.nodes[first].status() or {}
    assert st["relay"]["counters"]["forwarded_bytes"] > 1_000_000
    assert st["relay"]["counters"]["not_capable"] == 0

    # the relay stops: the other one takes over
    assert w.nodes[first].stop() == 0
    took_over = wait_for(lambda: _relay_of(a, b) == ids[second] and _relay_of(b, a) == ids[second], 150, 1.0)
    assert took_over, f"A: {a.status()}\nA log:\n{a.log_text()}"
    assert wait_for(lambda: w.ns["a"].ping(VPN["b"], count=1, timeout=1), 20)

    # a port forward on rB (to the address B advertises): A and B move to the direct path
    rb = w.ns["rb"]
    rb.iptables("-t", "nat", "-A", "PREROUTING", "-i", "wan0", "-p", "udp", "--dport", "3210", "-j", "DNAT",
                "--to-destination", f"{B_LAN}:3210")  # fmt: skip
    rb.iptables("-I", "FORWARD", "-i", "wan0", "-d", B_LAN, "-p", "udp", "--dport", "3210", "-j", "ACCEPT")
    moved = wait_for(lambda: _direct(a, f"{RB_WAN}:3210") and _relay_of(a, b) is None, 150, 1.0)
    assert moved, f"A: {a.status()}\nA log:\n{a.log_text()}"
    assert "now reached directly" in a.log_text()
    assert wait_for(lambda: w.ns["a"].ping(VPN["b"], count=1, timeout=1), 20)
    for name in ("pub2" if second == "pub2" else "pub1", "a", "b"):
        assert w.nodes[name].stop() == 0


@pytest.mark.timeout(400)
def test_tap_switch_mode_through_a_relay(topology: Topology, tmp_path: Path) -> None:
    """TAP devices (switch mode): the ends learn each other's MAC through the relay (ARP), then a
    ping and a TCP transfer pass."""
    w = _build(topology, tmp_path, "-t", "tap", "--mode", "switch")
    a, b = w.nodes["a"], w.nodes["b"]
    assert wait_for(lambda: _relay_of(a, b) is not None and _relay_of(b, a) is not None, 120, 1.0), (
        a.log_text()
    )
    assert wait_for(lambda: w.ns["a"].ping(VPN["b"], count=1, timeout=1), 30)
    neigh = w.ns["a"].run(["ip", "neigh", "show", VPN["b"]], check=False).stdout
    assert "lladdr" in neigh, neigh  # resolved by ARP across the relay
    res = w.ns["a"].run(["ping", "-c", "5", "-i", "0.2", VPN["b"]], check=False)
    assert res.returncode == 0, res.stdout
    assert _tcp_transfer(w) == "1000000"
    for node in w.nodes.values():
        assert node.stop() == 0


def _line(log: str, needle: str) -> int:
    """Index of the first log line containing ``needle`` (the number of lines if none)."""
    lines = log.splitlines()
    return next((i for i, line in enumerate(lines) if needle in line), len(lines))


@pytest.mark.timeout(400)
def test_plan_knowledge_relays_at_once_while_the_direct_attempt_is_still_pending(
    topology: Topology, tmp_path: Path
) -> None:
    """``at_once`` (written by the plan for a symmetric NAT): A and B are relayed while their direct
    handshakes to each other's useless NAT addresses are still retransmitted, well within the grace
    a relay otherwise waits for them (``direct_grace``, on the daemon's own clock). The direct
    attempts give up only after 120 ticks (spec 6.7), which changes nothing for the relayed session:
    test_sim_relay.test_plan_knowledge_goes_through_a_relay_at_once runs that part in simulated time."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # A's peer_connected hook writes its peer variables to a file per peer node id
    script = (
        f'test "$EVENT" = peer_connected && env | grep -E "^(PEER|RELAY|RELAY_NODE_ID)=" | sort'
        f" > {hooks}/$NODE_ID.tmp && mv {hooks}/$NODE_ID.tmp {hooks}/$NODE_ID"
    )
    w = _build(topology, tmp_path, at_once=True, a_args=("--hook", script))
    a, b = w.nodes["a"], w.nodes["b"]
    assert wait_for(lambda: _relay_of(a, b) is not None and _relay_of(b, a) is not None, 60, 0.5), (
        a.log_text()
    )
    # B, started last, learnt of A from the public nodes as it connected to them: its relayed session
    # came up sooner after that than the grace a relay waits for without at_once (daemon clock)
    relay_id = _relay_of(a, b)
    ages = {p["node_id"]: p["connected_secs"] for p in b.peers()}
    assert max(ages.values()) - ages[_node_id(a)] < RelayConfig().direct_grace, b.status()
    # the relayed peer's hook names the relay by its underlay address; direct peers have no RELAY
    relay_addr = {_node_id(w.nodes["pub1"]): PUB1, _node_id(w.nodes["pub2"]): PUB2}[str(relay_id)]
    b_env = hooks / _node_id(b)
    assert wait_for(b_env.exists, 20), sorted(p.name for p in hooks.iterdir())
    env = dict(line.split("=", 1) for line in b_env.read_text().splitlines())
    assert env["PEER"].startswith("[100::") and env["RELAY"] == f"{relay_addr}:3210", env
    assert env["RELAY_NODE_ID"] == relay_id, env
    pub_env = hooks / _node_id(w.nodes["pub1"])
    assert wait_for(pub_env.exists, 20)
    assert pub_env.read_text() == f"PEER={PUB1}:3210\n"
    # the direct attempt is still on when the relayed session is up
    pending = [p for p in (a.status() or {}).get("pending", []) if p.startswith(RB_WAN)]
    assert pending and "Initialization timeout" not in a.log_text(), a.log_text()
    assert wait_for(lambda: w.ns["a"].ping(VPN["b"], count=1, timeout=1), 20)
    for node in w.nodes.values():
        assert node.stop() == 0


@pytest.mark.timeout(500)
def test_a_relay_that_lost_one_end_answers_no_route_and_the_ends_move(
    topology: Topology, tmp_path: Path
) -> None:
    """The relay in use loses B (its firewall drops B; it is then connected to A only) and forgets
    it after its peer timeout (40 s). A's next relayed datagram is answered "no route": A drops the
    session through it and both ends are relayed through the other public node, long before their
    own timeout of the relayed session (300 s) would have noticed."""
    w = _build(topology, tmp_path, at_once=True, pub_args=("--peer-timeout", "40"))
    a, b = w.nodes["a"], w.nodes["b"]
    ids = {name: _node_id(w.nodes[name]) for name in ("pub1", "pub2")}
    assert wait_for(lambda: _relay_of(a, b) is not None and _relay_of(b, a) is not None, 60, 0.5), (
        a.log_text()
    )
    first = next(n for n, i in ids.items() if i == _relay_of(a, b))
    second = "pub2" if first == "pub1" else "pub1"
    relay_ns = w.ns[first]
    relay_ns.iptables("-I", "INPUT", "-s", RB_WAN, "-j", "DROP")
    relay_ns.iptables("-I", "OUTPUT", "-d", RB_WAN, "-j", "DROP")
    moved = wait_for(lambda: _relay_of(a, b) == ids[second] and _relay_of(b, a) == ids[second], 200, 1.0)
    assert moved, f"A: {a.status()}\nA log:\n{a.log_text()}\nB log:\n{b.log_text()}"
    st: dict[str, Any] = w.nodes[first].status() or {}
    assert st["relay"]["counters"]["refusals_sent"] >= 1
    log = a.log_text()
    assert _line(log, "has no session with peer") < len(log.splitlines()), log
    relayed_lines = [line for line in log.splitlines() if "[100::" in line]
    assert not any("due to timeout" in line for line in relayed_lines), log
    assert wait_for(lambda: w.ns["a"].ping(VPN["b"], count=1, timeout=1), 20)
    for node in w.nodes.values():
        assert node.stop() == 0
