"""Issue 24 in real namespaces: a flood from spoofed sources lands on the listening socket while an
established peer's datagrams arrive on that peer's own connected socket.

Counters from ``status`` (datagrams read per socket kind, the node's drop reasons) decide; nothing
depends on how fast this machine is.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from reach_support import wait_for
from test_daemon_netns import PASSWORD, PY, VNode, full_mesh, ping

from vpncloud.lab.netns import Topology

pytestmark = pytest.mark.netns

#: Raw-socket flood: ``count`` session-like datagrams (slot 0, random rest) from random hosts of
#: 10.201.0.0/24 (not a, b or c) and random ports to ``dst``:3210. Prints how many went out.
FLOOD = """
import os, random, socket, struct, sys
dst, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
rnd = random.Random(24)
sent = 0
for i in range(count):
    src = "10.201.0.%d" % rnd.randrange(10, 250)
    data = b"\\x00" + os.urandom(60)
    udp = struct.pack("!HHHH", rnd.randrange(1024, 65535), 3210, 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
    sent += 1
print(sent)
"""


def _dataplane(node: VNode) -> dict[str, Any]:
    st = node.status()
    assert st is not None, f"{node.name} stopped answering"
    return dict(st["dataplane"])


def _drops(node: VNode) -> int:
    st = node.status()
    assert st is not None
    return int(st["invalid_protocol_total"]["packets"])


@pytest.mark.parametrize("mode", ["off", "super"])
def test_spoofed_flood_stays_on_the_listening_socket(lan3: Any, tmp_path: Path, mode: str) -> None:
    v4 = lan3.v4
    a_ns, b_ns, c_ns = lan3.nodes["a"], lan3.nodes["b"], lan3.nodes["c"]
    env = {"VPNCLOUD_DATAPLANE": mode}
    a = VNode(lan3.topo, a_ns, "a", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.1/24"], env)
    b = VNode(
        lan3.topo,
        b_ns,
        "b",
        tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.2/24", "-c", f"{v4['a']}:3210"],
        env,
    )
    full_mesh([a, b])
    wait_for(lambda: ping(b_ns, "10.100.0.1"), interval=0.1, what="tunnel")
    wait_for(lambda: _dataplane(a)["peer_sockets"] == 1, 10, interval=0.1, what="a's socket for b")

    def sent_by_b() -> int:
        st = b.status()
        assert st is not None and len(st["peers"]) == 1
        return int(st["peers"][0]["traffic"]["out_packets_total"])

    before = _dataplane(a)
    b_before = sent_by_b()
    drops_before = _drops(a)
    # c floods a from spoofed sources while b pings a through the tunnel
    flood = c_ns.popen([PY, "-c", FLOOD, v4["a"], "20000"], stdout=subprocess.PIPE)
    b_ns.run(["ping", "-c", "300", "-i", "0.005", "-W", "1", "-q", "10.100.0.1"], check=False, timeout=60)
    out, _ = flood.communicate(timeout=120)
    assert int(out.strip()) == 20000
    b_sent = sent_by_b() - b_before
    assert b_sent >= 300

    def peer_reads() -> int:
        return int(_dataplane(a)["peer_socket_datagrams"] - before["peer_socket_datagrams"])

    # every datagram b sent meanwhile was read from a's socket for b, none from the flooded one
    wait_for(lambda: peer_reads() >= b_sent, 30, interval=0.2, what="b's datagrams on b's socket")
    after = _dataplane(a)
    listened = after["listen_socket_datagrams"] - before["listen_socket_datagrams"]
    # the flood was read (and dropped) on the listening socket only; the kernel may have dropped
    # more when that queue was full, which is the point
    assert 0 < listened <= 20000
    wait_for(lambda: _drops(a) - drops_before >= listened, 10, interval=0.2, what="flood counted")
    # the session survived and still works in both directions
    assert wait_for(lambda: ping(a_ns, "10.100.0.2"), interval=0.1, what="tunnel after the flood")
    assert a.alive() and b.alive()
    st = a.status()
    assert st is not None and len(st["peers"]) == 1


def test_peer_socket_follows_the_peer(lan3: Any, tmp_path: Path) -> None:
    """A peer that goes away loses its socket; when it comes back from a new port it gets a new one
    and its datagrams land there (roaming is a new address to the node)."""
    v4 = lan3.v4
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    a = VNode(lan3.topo, a_ns, "a", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.1/24"])

    def start_b(name: str, port: int) -> VNode:
        args = ["-p", PASSWORD, "--ip", "10.100.0.2/24", "-c", f"{v4['a']}:3210", "--listen", str(port)]
        return VNode(lan3.topo, b_ns, name, tmp_path, args)

    b = start_b("b", 3300)
    full_mesh([a, b])
    wait_for(lambda: _dataplane(a)["peer_sockets"] == 1, 10, interval=0.1, what="a's socket for b")
    assert b.stop() == 0
    # b's CLOSE removes the peer and its socket
    wait_for(lambda: _dataplane(a)["peer_sockets"] == 0, 10, interval=0.1, what="socket closed")
    b2 = start_b("b2", 3301)
    full_mesh([a, b2])
    wait_for(lambda: _dataplane(a)["peer_sockets"] == 1, 10, interval=0.1, what="socket for the new port")
    before = _dataplane(a)["peer_socket_datagrams"]
    assert wait_for(lambda: ping(b_ns, "10.100.0.1"), interval=0.1, what="tunnel from the new port")
    assert _dataplane(a)["peer_socket_datagrams"] > before


def test_port_in_use_still_fails(lan3: Any, tmp_path: Path) -> None:
    """SO_REUSEPORT on the listening socket must not let a second node share a taken port."""
    a_ns = lan3.nodes["a"]
    holder = a_ns.popen(
        [
            PY,
            "-c",
            "import socket,sys,time\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
            "s.bind(('::',3400)); print('ok',flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"ok"
        node = VNode(lan3.topo, a_ns, "a", tmp_path, ["-p", PASSWORD, "--listen", "3400"])
        assert node.proc is not None and node.proc.wait(timeout=30) != 0
        assert "Address already in use" in node.log_text()
    finally:
        holder.kill()
        holder.wait()
    assert socket.has_ipv6


def test_daemon_without_default_route_says_so_and_fits_the_mtu(topology: Topology, tmp_path: Path) -> None:
    """Issue 24: without a default route the original keeps MTU 1500 and says nothing above debug."""
    ns = topology.node("nr", "10.202.0.1/24", default_route=False)
    ns.ip("link", "set", "eth0", "mtu", "1400")
    node = VNode(topology, ns, "nr", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.1/24"])
    wait_for(node.status, 30, interval=0.1, what="node status")
    line = next(x for x in node.log_text().splitlines() if "No default route" in x)
    assert line.startswith("WARN") and "taking the MTU of eth0 (1400)" in line
    st = node.status()
    assert st is not None
    # the device's MTU inside the namespace (sysfs shows the reader's namespace)
    assert ns.run(["cat", f"/sys/class/net/{st['interface']}/mtu"]).stdout.strip() == str(1400 - 73)
