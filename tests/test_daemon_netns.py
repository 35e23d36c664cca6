"""The real daemon in network namespaces: real TUN/TAP devices, real UDP, real signals.

Every wait polls a condition (status through the control socket, ping, a file) with a deadline.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from reach_support import wait_for

from vpncloud.core.identity import genkey_text
from vpncloud.daemon.control import ControlError, request
from vpncloud.lab.netns import Netns, Topology

pytestmark = pytest.mark.netns

PY = sys.executable
PASSWORD = "netns-test"


class VNode:
    """One daemon process in a namespace, with its log and control socket in ``tmp``."""

    def __init__(
        self,
        topo: Topology,
        ns: Netns,
        name: str,
        tmp: Path,
        args: list[str],
        env: dict[str, str] | None = None,
    ):
        self.topo, self.ns, self.name, self.tmp, self.args = topo, ns, name, tmp, args
        self.sock = str(tmp / f"{name}.sock")
        self.log = tmp / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        env = {**os.environ, **(self.env or {})}
        env.pop("PASSWORD", None)
        self.proc = self.topo.spawn(
            self.ns,
            [PY, "-m", "vpncloud", "--no-port-forwarding", "-v", "--control-socket", self.sock, *self.args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        out.close()

    def status(self) -> dict[str, Any] | None:
        try:
            reply = request(self.sock, timeout=2.0)
        except ControlError:
            return None
        return reply.get("status") if reply.get("ok") else None

    def peer_nodes(self) -> set[str]:
        st = self.status()
        return {p["node_id"] for p in st["peers"]} if st else set()

    def node_id(self) -> str:
        st = wait_for(self.status, interval=0.1, what=f"{self.name} status")
        return str(st["node_id"])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)


def ping(ns: Netns, addr: str) -> bool:
    return ns.ping(addr, count=1, timeout=1.0)


def full_mesh(nodes: list[VNode], timeout: float = 30.0) -> None:
    ids = {n.name: n.node_id() for n in nodes}
    for n in nodes:
        others = {ids[m.name] for m in nodes if m is not n}
        wait_for(
            lambda n=n, others=others: others <= n.peer_nodes(),
            timeout,
            interval=0.1,
            what=f"{n.name} to see all peers",
        )


def ping_matrix(pairs: list[tuple[Netns, str]], timeout: float = 30.0) -> None:
    for src, _ in pairs:
        for _, dst in pairs:
            wait_for(
                lambda src=src, dst=dst: ping(src, dst), timeout, interval=0.2, what=f"ping {src} -> {dst}"
            )


# --- TUN router mode --------------------------------------------------------------------------------


def test_three_nodes_tun_router_ipv4_and_ipv6_inside(lan3: Any, tmp_path: Path) -> None:
    """C is configured with B only and learns A from B's peer list; full ping matrix v4 and v6."""
    v4 = lan3.v4
    nodes = []
    for i, name in enumerate("abc", start=1):
        args = [
            "-m", "router", "-p", PASSWORD, "--ip", f"10.100.0.{i}/24",
            "--ifup", f"ip -6 addr add fd99::{i}/64 dev $IFNAME nodad",
            "--claim", f"fd99::{i}/128",
            "--hook", f"peer_connected:echo \"$PEER|$CLAIMS|$NODE_ID|$IFNAME\" >> {tmp_path}/{name}.hook",
        ]  # fmt: skip
        if name == "b":
            args += ["-c", f"{v4['a']}:3210"]
        if name == "c":
            args += ["-c", v4["b"]]  # no port: 3210 is appended
        if name == "c":
            # C starts once A and B are connected, so B's handshake NODE_INFO already lists A
            # (otherwise C would only hear of A at B's next periodic NODE_INFO, 90 s later)
            full_mesh(nodes)
        nodes.append(VNode(lan3.topo, lan3.nodes[name], name, tmp_path, args))
    full_mesh(nodes)
    ids = {n.name: n.node_id() for n in nodes}
    pairs4 = [(lan3.nodes[x], f"10.100.0.{i}") for i, x in enumerate("abc", start=1)]
    pairs6 = [(lan3.nodes[x], f"fd99::{i}") for i, x in enumerate("abc", start=1)]
    ping_matrix(pairs4)
    ping_matrix(pairs6)
    # C reached A without being told: A is not in C's configured peers
    st_c = nodes[2].status()
    assert st_c is not None
    assert [p["name"] for p in st_c["configured_peers"]] == [f"{v4['b']}:3210"]
    assert ids["a"] in {p["node_id"] for p in st_c["peers"]}
    # claims arrive with their kernel routes (IPv4 /32 auto-claims and the IPv6 claims)
    assert "fd99::1/128" in st_c["routes"] and "10.100.0.1/32" in st_c["routes"]
    route = lan3.nodes["c"].ip("-6", "route", "show", "fd99::1").stdout
    assert "vpncloud0" in route
    # hooks got the original's environment
    hook_lines = wait_for(
        lambda: (tmp_path / "a.hook").exists() and (tmp_path / "a.hook").read_text(),
        10,
        interval=0.1,
        what="a.hook",
    )
    peer, claims, node_id, ifname = hook_lines.splitlines()[0].split("|")
    assert re.fullmatch(r"10\.201\.0\.\d:3210", peer) and ifname == "vpncloud0"
    assert re.fullmatch(r"[0-9a-f]{32}", node_id) and "/32" in claims
    for n in nodes:
        assert n.alive()
        assert "Traceback" not in n.log_text()


def test_two_nodes_status_stats_statsd_notify_and_sigterm(lan3: Any, tmp_path: Path) -> None:
    v4 = lan3.v4
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    # statsd receiver inside a's namespace (loopback there); NOTIFY_SOCKET for a
    statsd_out = tmp_path / "statsd.txt"
    receiver = lan3.topo.spawn(
        a_ns,
        [PY, "-c", textwrap.dedent(f"""
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 18125))
            data, addr = s.recvfrom(65535)
            open({str(statsd_out)!r}, "w").write(data.decode())
        """)],
    )  # fmt: skip
    a_ns.link_up("lo")
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    stats_file = tmp_path / "a.stats"
    logfile = tmp_path / "a.file.log"
    a = VNode(
        lan3.topo, a_ns, "a", tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.1/24", "--stats-file", str(stats_file), "--stats-interval", "3",
         "--statsd-server", "127.0.0.1:18125", "--statsd-prefix", "vctest", "--log-file", str(logfile),
         "--ifdown", f"echo down-$IFNAME > {tmp_path}/ifdown"],
        env={"NOTIFY_SOCKET": notify_path},
    )  # fmt: skip
    assert notify.recv(100) == b"READY=1"
    notify.close()
    b = VNode(
        lan3.topo, b_ns, "b", tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.2/24", "-c", f"{v4['a']}:3210", "--no-routes"],
    )  # fmt: skip
    full_mesh([a, b])
    wait_for(lambda: ping(a_ns, "10.100.0.2"), interval=0.1, what="ping over the tunnel")
    st_b = b.status()
    assert st_b is not None and st_b["routes"] == []  # --no-routes
    assert "10.100.0.1 dev vpncloud0" not in b_ns.ip("route").stdout
    assert "10.100.0.2 dev vpncloud0" in a_ns.ip("route").stdout

    # status --json through the real CLI
    r = a_ns.run([PY, "-m", "vpncloud", "status", "--json", "--socket", a.sock], check=False)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    for key in (
        "node_id",
        "interface",
        "version",
        "mode",
        "peers",
        "claims",
        "table",
        "traffic",
        "own_addresses",
    ):
        assert key in st
    assert st["interface"] == "vpncloud0" and st["version"] == "VpnCloud v2.4.0"
    assert st["claims"] == ["10.100.0.1/32"]
    (peer,) = st["peers"]
    assert peer["addr"] == f"{v4['b']}:3210" and peer["algorithm"] in ("AES128", "AES256", "CHACHA20")
    for key in ("node_id", "addrs", "connected_secs", "last_seen_secs", "claims", "traffic", "rotation"):
        assert key in peer
    assert peer["claims"] == ["10.100.0.2/32"]
    assert any(c["range"] == "10.100.0.2/32" for c in st["table"]["claims"])
    human = a_ns.run([PY, "-m", "vpncloud", "status", "--socket", a.sock], check=False)
    assert human.returncode == 0 and "Peers" in human.stdout
    assert PASSWORD not in r.stdout + human.stdout

    # stats file: 0644, the original's layout; statsd datagram from the VPN socket
    assert oct(os.stat(stats_file).st_mode & 0o777) == "0o644"
    text = wait_for(lambda: stats_file.read_text(), 15, interval=0.1, what="stats file")
    assert text.startswith("peers:\n") and f'"{v4["b"]}:3210"' in text
    for block in ("forwarding_table:", "peer_traffic:", "payload_traffic:", "invalid_protocol_traffic:"):
        assert block in text
    statsd = wait_for(
        lambda: statsd_out.exists() and statsd_out.read_text(), 15, interval=0.1, what="statsd datagram"
    )
    lines = statsd.split("\n")
    assert lines[0] == "vctest.peer_count:1|g"
    assert all(re.fullmatch(r"vctest\.[a-z_.]+:\d+\|[gc]", line) for line in lines)
    receiver.wait(timeout=5)

    # --log-file format
    first = logfile.read_text().splitlines()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - (INFO|DEBUG|WARN|ERROR) - .+", first)

    # SIGTERM: exit 0, CLOSE reaches b at once, ifdown ran, device gone
    assert a.stop(signal.SIGTERM) == 0
    wait_for(lambda: not b.peer_nodes(), 5, interval=0.1, what="b to process CLOSE")
    assert (tmp_path / "ifdown").read_text().strip() == "down-vpncloud0"
    assert "vpncloud0" not in a_ns.links()
    assert "Traceback" not in a.log_text()
    assert not os.path.exists(a.sock)


# --- TAP switch and hub ---------------------------------------------------------------------------


def _tap_site(topo: Topology, lan: Any, name: str, index: int) -> Netns:
    """A LAN host namespace behind the node's bridge: host eth0 <-> node 'lan0' in bridge 'brl'."""
    node_ns = lan.nodes[name]
    node_ns.add_bridge("brl")
    host = topo.namespace(f"h{name}")
    topo.veth(host, "eth0", node_ns, "lan0")
    node_ns.attach_to_bridge("lan0", "brl")
    host.add_addr("eth0", f"10.110.0.{index}/24")
    return host


@pytest.mark.parametrize("mode", ["switch", "hub"])
def test_tap_three_sites_with_bridges(lan3: Any, tmp_path: Path, mode: str) -> None:
    v4 = lan3.v4
    hosts = {}
    nodes = []
    for i, name in enumerate("abc", start=1):
        hosts[name] = _tap_site(lan3.topo, lan3, name, i)
        args = ["-t", "tap", "-m", mode, "-d", "vctap%d", "-p", PASSWORD,
                "--ifup", "ip link set $IFNAME master brl up"]  # fmt: skip
        if name != "a":
            args += ["-c", f"{v4['a']}:3210"]
        if name == "c":
            full_mesh(nodes)  # so that A's handshake NODE_INFO to C lists B (see the TUN test)
        nodes.append(VNode(lan3.topo, lan3.nodes[name], name, tmp_path, args))
    full_mesh(nodes)
    ping_matrix([(hosts[x], f"10.110.0.{i}") for i, x in enumerate("abc", start=1)])
    if mode == "hub":
        # unicast a -> b is flooded: c's device also gets frames addressed to b's MAC
        mac_b = hosts["b"].run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
        assert (
            hosts["a"].run(["ping", "-c", "5", "-i", "0.2", "-W", "1", "10.110.0.2"], check=False).returncode
            == 0
        )

        def flooded() -> bool:
            st = nodes[2].status()
            return bool(st) and any(
                e["local"] == mac_b and e.get("in_packets_total", 0) >= 5 for e in st["traffic"]["payload"]
            )

        wait_for(flooded, 10, interval=0.1, what="c to receive frames for b")


# --- robustness -----------------------------------------------------------------------------------

SNIFF = """
import socket, sys, json
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.settimeout(20)
src = socket.inet_aton(sys.argv[1])
while True:
    pkt = s.recv(65535)
    if pkt[9] != 17 or pkt[12:16] != src:
        continue
    ihl = (pkt[0] & 15) * 4
    payload = pkt[ihl + 8:]
    if len(payload) > 60 and payload[0] != 0xff:
        print(payload.hex())
        break
"""

SPOOF = """
import socket, struct, sys, os
src, dst, sport, dport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for hexdata in sys.argv[5:]:
    data = bytes.fromhex(hexdata)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
"""


def tunnel_pair(lan3: Any, tmp_path: Path) -> tuple[VNode, VNode]:
    """Daemons in ``a`` (10.100.0.1) and ``b`` (10.100.0.2, configured to connect to a), tunnel up."""
    a = VNode(lan3.topo, lan3.nodes["a"], "a", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.1/24"])
    b_args = ["-p", PASSWORD, "--ip", "10.100.0.2/24", "-c", f"{lan3.v4['a']}:3210"]
    b = VNode(lan3.topo, lan3.nodes["b"], "b", tmp_path, b_args)
    full_mesh([a, b])
    wait_for(lambda: ping(lan3.nodes["a"], "10.100.0.2"), interval=0.1, what="tunnel")
    return a, b


def test_garbage_truncated_and_replayed_datagrams(lan3: Any, tmp_path: Path) -> None:
    v4 = lan3.v4
    a_ns, b_ns, c_ns = lan3.nodes["a"], lan3.nodes["b"], lan3.nodes["c"]
    a, b = tunnel_pair(lan3, tmp_path)

    def invalid() -> int:
        st = a.status()
        assert st is not None, "node a stopped answering"
        return int(st["invalid_protocol_total"]["packets"])

    # capture one real session frame b -> a while a pings b through the tunnel
    sniffer = a_ns.popen([PY, "-c", SNIFF, v4["b"]], stdout=subprocess.PIPE)
    wait_for(
        lambda: ping(a_ns, "10.100.0.2") and sniffer.poll() is not None,
        20,
        interval=0.1,
        what="captured frame",
    )
    frame = sniffer.stdout.read().decode().strip() if sniffer.stdout else ""
    assert len(frame) > 100

    # garbage from an unknown source: every kind is counted, none crashes the node
    before = invalid()
    garbage = [os.urandom(n).hex() for n in (1, 7, 40, 200, 1400)] + ["00" * 10, "ff" * 3, "ff"]
    c_ns.run([PY, "-c", SPOOF, v4["c"], v4["a"], "4000", "3210", *garbage])
    wait_for(lambda: invalid() >= before + len(garbage), 10, interval=0.1, what="garbage counted")

    # truncated frames and garbage from the peer's own address hit the session path
    before = invalid()
    bad = [frame[:20], frame[:48], "00" * 10, frame[:-2], frame[:16] + "00" * 40]
    b_ns.run([PY, "-c", SPOOF, v4["b"], v4["a"], "3210", "3210", *bad])
    wait_for(lambda: invalid() >= before + len(bad), 10, interval=0.1, what="truncated frames counted")

    # a replayed DATA frame is dropped and counted as a replay at once: the original writes
    # duplicates inside its 1-2 tick window to the device (quirk 16), the receive bitmap does not
    def replays() -> int:
        st = a.status()
        assert st is not None, "node a stopped answering"
        return int(st["traffic"]["drops"].get("replay", 0))

    before = replays()
    b_ns.run([PY, "-c", SPOOF, v4["b"], v4["a"], "3210", "3210", frame, frame, frame])
    wait_for(lambda: replays() >= before + 3, 10, interval=0.1, what="replays counted")
    # still alive and the session still works
    assert a.alive() and b.alive()
    assert wait_for(lambda: ping(a_ns, "10.100.0.2"), interval=0.1, what="tunnel after abuse")
    assert "Traceback" not in a.log_text()


def test_kill_9_and_restart(lan3: Any, tmp_path: Path) -> None:
    v4 = lan3.v4
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    a = VNode(lan3.topo, a_ns, "a", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.1/24"])
    b = VNode(
        lan3.topo, b_ns, "b", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.2/24", "-c", f"{v4['a']}:3210"]
    )
    full_mesh([a, b])
    traffic = b_ns.popen(["ping", "-i", "0.2", "10.100.0.1"])
    wait_for(lambda: ping(b_ns, "10.100.0.1"), interval=0.1, what="tunnel")
    old_id = b.node_id()
    assert b.stop(signal.SIGKILL) == -signal.SIGKILL
    traffic.kill()
    traffic.wait()
    wait_for(lambda: "vpncloud0" not in b_ns.links(), 5, interval=0.1, what="device removed with the process")
    b.start()
    wait_for(lambda: b.status() is not None and b.node_id() != old_id, interval=0.1, what="restarted b")
    new_id = b.node_id()
    wait_for(lambda: new_id in a.peer_nodes(), 30, interval=0.1, what="a to accept the restarted b")
    wait_for(
        lambda: ping(b_ns, "10.100.0.1") and ping(a_ns, "10.100.0.2"),
        30,
        interval=0.1,
        what="traffic resumed",
    )
    assert a.alive() and "Traceback" not in a.log_text()


def test_sighup_adds_trusted_key_and_peer_without_dropping_sessions(lan3: Any, tmp_path: Path) -> None:
    v4 = lan3.v4
    rng = random.Random(7)
    keys = {}
    for name in "abc":
        lines = genkey_text(None, rng).splitlines()
        keys[name] = (lines[0].split(": ")[1], lines[1].split(": ")[1])

    def write_a(trusted: list[str], peers: list[str]) -> None:
        (tmp_path / "a.net").write_text(
            f"ip: 10.100.0.1/24\ncrypto:\n  private-key: {keys['a'][0]}\n"
            f"  trusted-keys: [{', '.join(keys[t][1] for t in trusted)}]\n"
            f"peers: [{', '.join(peers)}]\n"
        )

    write_a(["a", "b"], [])
    a = VNode(lan3.topo, lan3.nodes["a"], "a", tmp_path, ["--config", str(tmp_path / "a.net")])
    common = ["--trusted-key", f"{keys['a'][1]},{keys['b'][1]},{keys['c'][1]}"]
    b_args = ["--private-key", keys["b"][0], *common, "--ip", "10.100.0.2/24", "-c", f"{v4['a']}:3210"]
    b = VNode(lan3.topo, lan3.nodes["b"], "b", tmp_path, b_args)
    c = VNode(
        lan3.topo,
        lan3.nodes["c"],
        "c",
        tmp_path,
        ["--private-key", keys["c"][0], *common, "--ip", "10.100.0.3/24"],
    )
    full_mesh([a, b])
    id_b, id_c = b.node_id(), c.node_id()
    assert id_c not in a.peer_nodes()
    st = a.status()
    assert st is not None
    since_b = next(p["connected_secs"] for p in st["peers"] if p["node_id"] == id_b)
    sampled = time.monotonic()
    # c is trusted and added as a configured peer; reload with SIGHUP
    write_a(["a", "b", "c"], [f"{v4['c']}:3210"])
    assert a.proc is not None
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: id_c in a.peer_nodes(), 30, interval=0.1, what="a to connect to c after SIGHUP")
    wait_for(lambda: ping(lan3.nodes["a"], "10.100.0.3"), interval=0.1, what="tunnel a-c")
    st = a.status()
    assert st is not None
    still_b = next(p for p in st["peers"] if p["node_id"] == id_b)
    # the same session, not a new handshake: its age grew by (about) the time that passed
    assert still_b["connected_secs"] >= since_b + (time.monotonic() - sampled) - 1.5
    assert a.alive() and "Configuration reloaded" in a.log_text()
    # a broken config on SIGHUP keeps the old one
    (tmp_path / "a.net").write_text("mode: bridge\n")
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed" in a.log_text(), 10, interval=0.1, what="reload error logged")
    assert a.alive() and {id_b, id_c} <= a.peer_nodes()


# --- underlay variants ----------------------------------------------------------------------------


def test_ipv6_only_underlay(topology: Topology, tmp_path: Path) -> None:
    a_ns = topology.node("a", "fd30::1/64")
    b_ns = topology.node("b", "fd30::2/64")
    for ns in (a_ns, b_ns):  # wait for DAD, or the address cannot be used yet
        wait_for(
            lambda ns=ns: "tentative" not in ns.ip("-6", "addr", "show", "dev", "eth0").stdout,
            10,
            interval=0.1,
            what="DAD",
        )
    a = VNode(topology, a_ns, "a", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.1/24"])
    b = VNode(
        topology, b_ns, "b", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.2/24", "-c", "[fd30::1]:3210"]
    )
    full_mesh([a, b])
    wait_for(lambda: ping(a_ns, "10.100.0.2"), interval=0.1, what="tunnel over IPv6")
    st = a.status()
    assert st is not None and st["peers"][0]["addr"] == "[fd30::2]:3210"


def test_ipv6_disabled_in_namespace(lan3: Any, tmp_path: Path) -> None:
    v4 = lan3.v4
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    for ns in (a_ns, b_ns):
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
    a = VNode(lan3.topo, a_ns, "a", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.1/24"])
    # b also tries an IPv6 peer that cannot be reached: logged, not fatal
    b = VNode(
        lan3.topo, b_ns, "b", tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.2/24", "-c", f"{v4['a']}:3210", "-c", "[fd20:1::1]:3210"],
    )  # fmt: skip
    full_mesh([a, b])
    wait_for(lambda: ping(a_ns, "10.100.0.2"), interval=0.1, what="tunnel over IPv4")
    assert "IPv6 is disabled on this host" in a.log_text()
    assert a.alive() and b.alive()
    assert "Traceback" not in a.log_text() + b.log_text()


# --- process behaviour ----------------------------------------------------------------------------


def test_daemonize_pid_file_and_privilege_drop(lan3: Any, tmp_path: Path) -> None:
    a_ns = lan3.nodes["a"]
    os.chmod(tmp_path, 0o755)
    pid_file = tmp_path / "a.pid"
    log_file = tmp_path / "a.daemon.log"
    stats_file = tmp_path / "a.stats"
    sock = str(tmp_path / "a.sock")
    r = a_ns.run(
        [PY, "-m", "vpncloud", "--no-port-forwarding", "-p", PASSWORD, "--ip", "10.100.0.1/24",
         "--daemon", "--pid-file", str(pid_file), "--log-file", str(log_file), "--control-socket", sock,
         "--user", "nobody", "--group", "nogroup", "--stats-file", str(stats_file), "--stats-interval", "2"],
        check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr  # the parent returns once the child runs
    pid = int(
        wait_for(
            lambda: pid_file.exists() and pid_file.read_text().strip(), 10, interval=0.1, what="pid file"
        )
    )

    def uid() -> str:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return next(line for line in lines if line.startswith("Uid:")).split()[1]

    # the pid file is written just before the drop, so poll for the new uid
    wait_for(lambda: uid() == "65534", 10, interval=0.1, what="uid of nobody")
    # TUN in normal mode programs routes: CAP_NET_ADMIN (bit 12) is all that is left
    assert capabilities(pid) == {"CapEff": 1 << 12, "CapPrm": 1 << 12, "CapInh": 0, "CapAmb": 0}
    assert "vpncloud0" in a_ns.links()

    def status() -> Any:
        try:
            return request(sock, timeout=2).get("status")
        except ControlError:
            return None

    st = wait_for(status, 10, interval=0.1, what="status of the daemon")
    assert st["pid"] == pid
    # the stats file still gets written after the drop (it was handed to the new user)
    wait_for(lambda: stats_file.read_text().startswith("peers:"), 10, interval=0.1, what="stats file")
    wait_for(lambda: "Dropped privileges" in log_file.read_text(), 10, interval=0.1, what="log line")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, interval=0.1, what="daemon exit")
    assert "vpncloud0" not in a_ns.links()


def capabilities(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    keys = ("CapEff", "CapPrm", "CapInh", "CapAmb")
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in lines) if k in keys}


@pytest.mark.parametrize("routes", [True, False])
def test_routes_still_follow_claims_after_the_privilege_drop(lan3: Any, tmp_path: Path, routes: bool) -> None:
    """A claim that arrives after ``--user`` still becomes a kernel route: the daemon keeps
    CAP_NET_ADMIN and nothing else. With ``--no-routes`` it keeps no capability, as the original."""
    v4 = lan3.v4
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    os.chmod(tmp_path, 0o755)
    a = VNode(
        lan3.topo, a_ns, "a", tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.1/24", "--user", "nobody", "--group", "nogroup",
         *([] if routes else ["--no-routes"])],
    )  # fmt: skip
    assert a.proc is not None
    wait_for(lambda: "Dropped privileges" in a.log_text(), 10, interval=0.1, what="privilege drop")
    caps = capabilities(a.proc.pid)
    assert caps == ({"CapEff": 1 << 12, "CapPrm": 1 << 12} if routes else {"CapEff": 0, "CapPrm": 0}) | {
        "CapInh": 0,
        "CapAmb": 0,
    }
    # only now does a peer with an extra claim show up
    b = VNode(
        lan3.topo, b_ns, "b", tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.2/24", "--claim", "10.200.5.0/24", "-c", f"{v4['a']}:3210"],
    )  # fmt: skip
    full_mesh([a, b])
    if routes:
        wait_for(
            lambda: "10.200.5.0/24 dev vpncloud0" in a_ns.ip("route").stdout,
            10,
            interval=0.1,
            what="route of the claim",
        )
        st = a.status()
        assert st is not None and "10.200.5.0/24" in st["routes"]
        assert "Failed to add route" not in a.log_text()
    else:
        st = a.status()
        assert st is not None and st["routes"] == []
        assert "10.200.5.0/24" not in a_ns.ip("route").stdout
    assert "Traceback" not in a.log_text()


def test_unanswered_configured_peer_is_reported(lan3: Any, tmp_path: Path) -> None:
    """c runs no VPN: after the first step of connection attempts the log says so, once, with the
    usual causes (the original keeps retrying silently)."""
    a = VNode(
        lan3.topo, lan3.nodes["a"], "a", tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.1/24", "-c", f"{lan3.v4['c']}:3210"],
    )  # fmt: skip
    wait_for(lambda: "No connection to" in a.log_text(), 40, interval=0.2, what="unreachable-peer warning")
    text = a.log_text()
    assert text.count("No connection to") == 1 and f"{lan3.v4['c']}:3210" in text
    assert PASSWORD not in text and a.alive()


def test_unknown_user_fails_before_device(lan3: Any, tmp_path: Path) -> None:
    r = lan3.nodes["a"].run(
        [
            PY,
            "-m",
            "vpncloud",
            "-p",
            PASSWORD,
            "--user",
            "no-such-user-xyz",
            "--control-socket",
            str(tmp_path / "s"),
        ],
        check=False,
    )
    assert r.returncode == 255 and "Unknown user" in r.stdout
    assert "vpncloud0" not in lan3.nodes["a"].links()


def test_beacon_file_lets_a_node_find_its_peer(lan3: Any, tmp_path: Path) -> None:
    beacon = tmp_path / "beacon.txt"
    a = VNode(
        lan3.topo, lan3.nodes["a"], "a", tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.1/24", "--beacon-store", str(beacon), "--beacon-password", "bpw"],
    )  # fmt: skip
    wait_for(
        lambda: beacon.exists() and beacon.read_text().endswith("\n"), 15, interval=0.1, what="beacon file"
    )
    assert oct(os.stat(beacon).st_mode & 0o777) == "0o444"
    b = VNode(
        lan3.topo, lan3.nodes["b"], "b", tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.2/24", "--beacon-load", str(beacon), "--beacon-password", "bpw"],
    )  # fmt: skip
    full_mesh([a, b])
    wait_for(
        lambda: ping(lan3.nodes["b"], "10.100.0.1"), interval=0.1, what="tunnel found through the beacon"
    )
    assert a.stop() == 0
    assert not beacon.exists()  # the store file is removed at shutdown


def test_fix_rp_filter_and_cve_warning(lan3: Any, tmp_path: Path) -> None:
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    for ns in (a_ns, b_ns):
        ns.sysctl("net.ipv4.conf.all.rp_filter", 2)
    a = VNode(lan3.topo, a_ns, "a", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.1/24", "--fix-rp-filter"])
    b = VNode(lan3.topo, b_ns, "b", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.2/24"])
    wait_for(a.status, interval=0.1, what="a running")
    wait_for(b.status, interval=0.1, what="b running")
    assert a_ns.read_sysctl("net.ipv4.conf.all.rp_filter") == "1"
    assert a_ns.read_sysctl("net.ipv4.conf.vpncloud0.rp_filter") == "1"
    assert "CVE-2019-14899" not in a.log_text().upper()
    # without the flag nothing is changed, only the warning is logged
    assert b_ns.read_sysctl("net.ipv4.conf.all.rp_filter") == "2"
    assert "cve-2019-14899" in b.log_text() and "WARN - " in b.log_text()


def test_node_behind_websocket_proxy(lan3: Any, tmp_path: Path) -> None:
    pytest.importorskip("vpncloud.daemon.proxy_client")
    v4 = lan3.v4
    a_ns, b_ns, c_ns = lan3.nodes["a"], lan3.nodes["b"], lan3.nodes["c"]
    proxy_log = open(tmp_path / "proxy.log", "wb")  # noqa: SIM115 - the child owns it
    lan3.topo.spawn(
        c_ns, [PY, "-m", "vpncloud", "ws-proxy", "-l", "8080"], stdout=proxy_log, stderr=subprocess.STDOUT
    )
    proxy_log.close()
    wait_for(lambda: ":8080" in c_ns.run(["ss", "-ltn"]).stdout, 15, interval=0.1, what="proxy listening")
    a = VNode(lan3.topo, a_ns, "a", tmp_path, ["-p", PASSWORD, "--ip", "10.100.0.1/24"])
    b = VNode(
        lan3.topo, b_ns, "b", tmp_path,
        ["-p", PASSWORD, "--ip", "10.100.0.2/24", "-l", f"ws://{v4['c']}:8080", "-c", f"{v4['a']}:3210"],
    )  # fmt: skip
    full_mesh([a, b])
    wait_for(lambda: ping(b_ns, "10.100.0.1"), interval=0.1, what="tunnel through the proxy")
    st = a.status()
    assert st is not None
    # a sees b at the proxy's address, not at b's own underlay address
    assert st["peers"][0]["addr"].startswith(f"{v4['c']}:")
    assert "Connected to WebSocket proxy" in b.log_text()
