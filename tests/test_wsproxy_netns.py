"""Nodes without UDP reach each other through ``vpncloud ws-proxy`` (spec 16), real daemons throughout.

LAN 10.244.0.0/24: the proxy ``px`` (.1), nodes ``a`` (.2) and ``b`` (.3) whose namespaces DROP every
UDP packet (only TCP to the proxy works), and a public node ``c`` (.4) with normal UDP that a and b
know. a and b learn each other's proxy-side addresses from c's peer list and talk through the
proxy's UDP sockets; no datagram ever leaves a or b.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from reach_support import VpnNode, wait_for

from vpncloud.lab.netns import Netns, Topology

pytestmark = pytest.mark.netns

IP = {"px": "10.244.0.1", "a": "10.244.0.2", "b": "10.244.0.3", "c": "10.244.0.4"}
VPN = {"a": "10.99.4.2", "b": "10.99.4.3", "c": "10.99.4.4"}
PROXY_PORT = 8080


def _udp_dropped(ns: Netns) -> int:
    """Packets hit by the UDP DROP rules (both directions) of a namespace."""
    total = 0
    for chain in ("INPUT", "OUTPUT"):
        out = ns.run(["iptables", "-L", chain, "-n", "-v", "-x"]).stdout
        for line in out.splitlines():
            cols = line.split()
            if len(cols) > 3 and cols[2] == "DROP" and cols[3] in ("udp", "17"):
                total += int(cols[0])
    return total


def test_udp_blocked_nodes_talk_through_the_proxy(topology: Topology, tmp_path: Path) -> None:
    ns = {n: topology.node(n, f"{ip}/24") for n, ip in IP.items()}
    for n in ("a", "b"):
        ns[n].iptables("-A", "OUTPUT", "-p", "udp", "-j", "DROP")
        ns[n].iptables("-A", "INPUT", "-p", "udp", "-j", "DROP")
    proxy_log = tmp_path / "proxy.log"
    with proxy_log.open("w") as fh:
        proxy = topology.spawn(
            ns["px"],
            [sys.executable, "-m", "vpncloud", "ws-proxy", "-l", f"{IP['px']}:{PROXY_PORT}"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    assert wait_for(lambda: "Listening on ws://" in proxy_log.read_text(), 15), proxy_log.read_text()
    common = ["--no-port-forwarding", "--keepalive", "5"]
    c = VpnNode(topology, ns["c"], tmp_path, "c", "--ip", f"{VPN['c']}/24", *common)
    url = f"ws://{IP['px']}:{PROXY_PORT}"
    a = VpnNode(
        topology,
        ns["a"],
        tmp_path,
        "a",
        "--ip",
        f"{VPN['a']}/24",
        "-l",
        f"{url}/a",
        "-c",
        f"{IP['c']}:3210",
        *common,
    )
    b = VpnNode(
        topology,
        ns["b"],
        tmp_path,
        "b",
        "--ip",
        f"{VPN['b']}/24",
        "-l",
        f"{url}/b",
        "-c",
        f"{IP['c']}:3210",
        *common,
    )
    for node in (c, a, b):
        node.wait_running()
    # each node's own address is the one the proxy reported: proxy IP + its UDP port for that client
    own_a = wait_for(
        lambda: [x for x in (a.status() or {}).get("own_addresses", []) if x.startswith(IP["px"] + ":")], 20
    )
    own_b = wait_for(
        lambda: [x for x in (b.status() or {}).get("own_addresses", []) if x.startswith(IP["px"] + ":")], 20
    )
    assert own_a and own_b and own_a != own_b, (a.status(), b.status())
    # c sees a and b under those proxy addresses
    assert wait_for(lambda: {own_a[0], own_b[0]} <= c.peer_addrs(), 30), (c.peer_addrs(), a.log_text())
    # a and b connect to each other (addresses learned from c), again through the proxy
    assert wait_for(lambda: own_b[0] in a.peer_addrs() and own_a[0] in b.peer_addrs(), 40), (
        a.peer_addrs(),
        b.peer_addrs(),
        a.log_text(),
    )
    assert wait_for(lambda: ns["a"].ping(VPN["b"]), 15)
    assert ns["a"].ping(VPN["b"], count=3) and ns["b"].ping(VPN["c"], count=3)
    # no UDP left a or b: their DROP rules saw nothing (the daemons never even tried), yet traffic flows
    assert _udp_dropped(ns["a"]) == 0 and _udp_dropped(ns["b"]) == 0
    text = proxy_log.read_text()
    assert text.count("connected, UDP address") >= 2, text
    # a dies abruptly (SIGKILL: no Close frame); the proxy notices and keeps serving b
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    assert wait_for(lambda: "disconnected" in proxy_log.read_text(), 10), proxy_log.read_text()
    assert ns["b"].ping(VPN["c"], count=3)
    assert proxy.poll() is None
    assert b.stop() == 0 and c.stop() == 0
    proxy.terminate()
    assert proxy.wait(10) == 0
