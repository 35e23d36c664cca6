"""UPnP IGD port forwarding (spec 17) against a real miniupnpd in a router namespace.

Topology: ``n1``/``n2`` (10.220.1.2/.3) on a LAN behind router ``rt`` (LAN 10.220.1.1, WAN 11.22.0.1,
iptables MASQUERADE) and miniupnpd listening on the LAN side; ``pub`` (11.22.0.2) on the WAN.

Why 11.22.0.0/24 on the WAN: miniupnpd refuses to work when its external address is private or
reserved ("Port forwarding is impossible", every AddPortMapping fails), and there is no option to
override that. The range exists only inside these namespaces, which have no route to anywhere else.
The router uses iptables-legacy because Debian's miniupnpd-iptables programs the legacy tables
through libiptc; its chains (MINIUPNPD ...) are created here as its own init script would.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reach_support import VpnNode, behind, in_netns, nat_router, wait_for

from vpncloud.daemon import portmap
from vpncloud.daemon.portmap import PortMapper
from vpncloud.lab.netns import Netns, Topology

LAN_GW = "10.220.1.1"
WAN_IP = "11.22.0.1"
PUB_IP = "11.22.0.2"
N1_IP = "10.220.1.2"
N2_IP = "10.220.1.3"
IPT = "iptables-legacy"


@dataclass
class UpnpLan:
    topo: Topology
    rt: Netns
    n1: Netns
    n2: Netns
    pub: Netns
    workdir: Path
    miniupnpd_log: Path

    def nat_rules(self) -> str:
        """The kernel's DNAT rules in miniupnpd's chain.

        iptables-legacy cannot print the DNAT target revision miniupnpd uses ("[unsupported
        revision]"), so the rules show the external port but not the destination; the lease file,
        which miniupnpd rewrites on every change, names the internal address.
        """
        return self.rt.run([IPT, "-t", "nat", "-S", "MINIUPNPD"]).stdout

    def dnat_ports(self) -> list[int]:
        """External UDP ports with a DNAT rule in the kernel."""
        return sorted(
            int(line.split("--dport ")[1].split()[0])
            for line in self.nat_rules().splitlines()
            if "-p udp" in line and "--dport " in line and "DNAT" in line
        )

    def leases(self) -> list[tuple[int, str, int]]:
        """``(external port, internal ip, internal port)`` of the UDP mappings in the lease file."""
        path = self.workdir / "leases"
        out = []
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split(":")
                if len(parts) >= 4 and parts[0] == "UDP":
                    out.append((int(parts[1]), parts[2], int(parts[3])))
        return out

    def mapped_to(self, internal: str) -> list[int]:
        """External ports the gateway forwards (UDP) to ``internal`` (``ip:port``): in the lease
        list AND backed by a DNAT rule in the kernel."""
        ip, port = internal.rsplit(":", 1)
        rules = self.dnat_ports()
        return sorted(e for e, i, p in self.leases() if i == ip and p == int(port) and e in rules)


def _miniupnpd_available() -> bool:
    import shutil

    return shutil.which("miniupnpd") is not None and shutil.which(IPT) is not None


needs_miniupnpd = pytest.mark.skipif(not _miniupnpd_available(), reason="needs miniupnpd and iptables-legacy")


@pytest.fixture
def upnp_lan(topology: Topology, tmp_path: Path) -> Iterator[UpnpLan]:
    lan = topology.switch("lsw")
    wan = topology.switch("wsw")
    rt = nat_router(topology, "rt", lan, wan, f"{LAN_GW}/24", f"{WAN_IP}/24", iptables=IPT)
    # the chains miniupnpd expects (its Debian init script would create them)
    for table, hook, iface in (("nat", "PREROUTING", "-i"), ("mangle", "PREROUTING", "-i")):
        rt.run([IPT, "-t", table, "-N", "MINIUPNPD"])
        rt.run([IPT, "-t", table, "-A", hook, iface, "wan0", "-j", "MINIUPNPD"])
    rt.run([IPT, "-t", "nat", "-N", "MINIUPNPD-POSTROUTING"])
    rt.run([IPT, "-t", "nat", "-I", "POSTROUTING", "-o", "wan0", "-j", "MINIUPNPD-POSTROUTING"])
    rt.run([IPT, "-t", "filter", "-N", "MINIUPNPD"])
    rt.run([IPT, "-t", "filter", "-A", "FORWARD", "-i", "wan0", "!", "-o", "wan0", "-j", "MINIUPNPD"])
    n1 = behind(topology, "n1", lan, f"{N1_IP}/24", LAN_GW)
    n2 = behind(topology, "n2", lan, f"{N2_IP}/24", LAN_GW)
    pub = topology.namespace("pub")
    topology.plug(pub, wan)
    pub.add_addr("eth0", f"{PUB_IP}/24")
    conf = tmp_path / "miniupnpd.conf"
    conf.write_text(
        "\n".join(
            [
                "ext_ifname=wan0",
                "listening_ip=lan0",
                "port=5555",
                "enable_upnp=yes",
                "enable_natpmp=yes",
                "secure_mode=yes",
                "system_uptime=yes",
                f"lease_file={tmp_path / 'leases'}",
                "uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b",
                "allow 1024-65535 10.220.1.0/24 1024-65535",
                "deny 0-65535 0.0.0.0/0 0-65535",
                "",
            ]
        )
    )
    log = tmp_path / "miniupnpd.log"
    with log.open("w") as fh:
        topology.spawn(
            rt, ["miniupnpd", "-f", str(conf), "-d", "-P", str(tmp_path / "pid")], stdout=fh, stderr=fh
        )
    assert wait_for(lambda: "HTTP listening on port" in log.read_text(), 10), log.read_text()
    yield UpnpLan(topology, rt, n1, n2, pub, tmp_path, log)


class _GatewayView:
    """A UPnP control point of our own (miniupnpc) in a LAN namespace, to ask the gateway about
    mappings. Discovery happens once; each query is one fast SOAP request."""

    def __init__(self, ns: Netns) -> None:
        import miniupnpc  # type: ignore[import-not-found]

        self.ns = ns
        with in_netns(ns):
            self.u = miniupnpc.UPnP()
            self.u.discoverdelay = 2000
            assert self.u.discover() >= 1
            self.u.selectigd()

    def lease_left(self, ext_port: int) -> int | None:
        """Remaining lease of a UDP mapping (GetSpecificPortMappingEntry), None if there is none."""
        with in_netns(self.ns):
            entry = self.u.getspecificportmapping(ext_port, "UDP")
        return None if entry is None else int(entry[4])


def _arrives(sender: Netns, receiver: Netns, bind: tuple[str, int], target: tuple[str, int]) -> bool:
    """Whether a datagram sent from ``sender`` to ``target`` reaches a socket bound to ``bind``."""
    with in_netns(receiver):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with in_netns(sender):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(bind)
        rx.settimeout(0.3)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            tx.sendto(b"probe", target)
            try:
                if rx.recv(100) == b"probe":
                    return True
            except TimeoutError:
                continue
        return False
    finally:
        rx.close()
        tx.close()


@pytest.mark.netns
@needs_miniupnpd
def test_maps_same_port_renews_and_removes(upnp_lan: UpnpLan) -> None:
    mapper = PortMapper(3210)
    assert not _arrives(upnp_lan.pub, upnp_lan.n1, ("0.0.0.0", 3210), (WAN_IP, 3210))
    with in_netns(upnp_lan.n1):
        t0 = time.monotonic()
        addrs = mapper.start(now=t0)
    # spec 17/10.5: internal and external socket addresses, plain IPv4; attempt 1 = same port
    assert addrs == [(N1_IP, 3210), (WAN_IP, 3210)]
    assert upnp_lan.mapped_to(f"{N1_IP}:3210") == [3210]
    # the mapping really forwards: a WAN host reaches the node's port without any prior outbound
    assert _arrives(upnp_lan.pub, upnp_lan.n1, ("0.0.0.0", 3210), (WAN_IP, 3210))
    # lease 1800 s, renewed 60 s before expiry
    assert mapper.mapping is not None and mapper.mapping.next_renewal == pytest.approx(t0 + 1740)
    assert mapper.renew_if_due(t0 + 1739) is False
    gateway = _GatewayView(upnp_lan.n1)
    left = wait_for(lambda: (v := gateway.lease_left(3210)) is not None and v <= 1797 and v, 10)
    assert left and left <= 1797
    with in_netns(upnp_lan.n1):
        assert mapper.renew_if_due(t0 + 1740) is True
    renewed = gateway.lease_left(3210)
    assert renewed is not None and left < renewed <= 1800
    assert mapper.mapping.next_renewal == pytest.approx(t0 + 1740 + 1740)  # floats: t0 is any clock value
    # removal at shutdown
    with in_netns(upnp_lan.n1):
        mapper.stop()
    assert upnp_lan.mapped_to(f"{N1_IP}:3210") == []
    assert gateway.lease_left(3210) is None
    assert not _arrives(upnp_lan.pub, upnp_lan.n1, ("0.0.0.0", 3210), (WAN_IP, 3210))
    mapper.stop()  # idempotent


@pytest.mark.netns
@needs_miniupnpd
def test_taken_port_falls_back_to_gateway_choice(upnp_lan: UpnpLan) -> None:
    first, second = PortMapper(3210), PortMapper(3210)
    with in_netns(upnp_lan.n1):
        assert first.start() == [(N1_IP, 3210), (WAN_IP, 3210)]
    with in_netns(upnp_lan.n2):
        addrs = second.start()
    assert addrs is not None and addrs[0] == (N2_IP, 3210)
    ext_port = addrs[1][1]
    assert addrs[1][0] == WAN_IP and ext_port != 3210
    assert upnp_lan.mapped_to(f"{N2_IP}:3210") == [ext_port]
    assert upnp_lan.mapped_to(f"{N1_IP}:3210") == [3210]
    assert _arrives(upnp_lan.pub, upnp_lan.n2, ("0.0.0.0", 3210), (WAN_IP, ext_port))
    with in_netns(upnp_lan.n2):
        second.stop()
    with in_netns(upnp_lan.n1):
        first.stop()
    assert upnp_lan.dnat_ports() == []


@pytest.mark.netns
def test_no_router_means_inactive(topology: Topology, caplog: pytest.LogCaptureFixture) -> None:
    solo = topology.node("solo", "10.221.0.1/24")
    logger = logging.getLogger("vpncloud")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger="vpncloud")
    try:
        mapper = PortMapper(3210, discover_ms=1000)
        started = time.monotonic()
        with in_netns(solo):
            assert mapper.start() is None
        assert time.monotonic() - started < 15
    finally:
        logger.removeHandler(caplog.handler)
    assert "Port-forwarding: no router found" in caplog.text
    assert not mapper.active and mapper.addresses() == []
    assert mapper.renew_if_due(1e9) is False
    mapper.stop()


class _ScriptedGateway:
    """A stand-in for miniupnpc, used only for gateway answers miniupnpd cannot be made to give
    (every port taken, "only permanent leases"). It records calls in order."""

    def __init__(
        self, fail_ports: set[int], permanent_only: bool = False, any_port: int | None = None
    ) -> None:
        self.discoverdelay = 0
        self.lanaddr = "192.168.9.2"
        self.fail_ports = fail_ports
        self.permanent_only = permanent_only
        self.any_port = any_port
        self.calls: list[tuple[Any, ...]] = []

    def discover(self) -> int:
        return 1

    def selectigd(self) -> str:
        return "http://gw/ctl"

    def externalipaddress(self) -> str:
        return "11.0.0.9"

    def addportmapping(
        self, ext: int, proto: str, host: str, internal: int, desc: str, rh: str, lease: int
    ) -> bool:
        self.calls.append(("add", ext, lease))
        if self.permanent_only and lease != 0:
            raise Exception("OnlyPermanentLeasesSupported")
        if ext in self.fail_ports:
            raise Exception("ConflictInMappingEntry")
        return True

    def addanyportmapping(self, *args: Any) -> int:
        self.calls.append(("any",))
        if self.any_port is None:
            raise Exception("Invalid Action")
        return self.any_port

    def deleteportmapping(self, *args: Any) -> bool:
        self.calls.append(("delete", args[0]))
        return True


def test_attempt_order_of_spec_17() -> None:
    import random

    rng = random.Random(7)
    twin = random.Random(7)
    expected_random = [twin.randint(1024, 65535) for _ in range(5)]
    gw = _ScriptedGateway(fail_ports={3210, 3211, 3212, 3213, 3214, *expected_random[:4]})
    mapper = PortMapper(3210, rng=rng, client_factory=lambda: gw)
    addrs = mapper.start(now=100.0)
    assert addrs == [("192.168.9.2", 3210), ("11.0.0.9", expected_random[4])]
    assert gw.calls == [
        ("add", 3210, 1800),
        ("any",),
        *[("add", p, 1800) for p in (3211, 3212, 3213, 3214)],
        *[("add", p, 1800) for p in expected_random],
    ]


def test_permanent_only_gateway_gets_lease_zero_and_no_renewal() -> None:
    gw = _ScriptedGateway(fail_ports=set(), permanent_only=True)
    mapper = PortMapper(3210, client_factory=lambda: gw)
    assert mapper.start(now=0.0) == [("192.168.9.2", 3210), ("11.0.0.9", 3210)]
    assert gw.calls == [("add", 3210, 1800), ("add", 3210, 0)]
    assert mapper.mapping is not None and mapper.mapping.lease == 0
    assert mapper.renew_if_due(1e9) is False
    mapper.stop()
    assert gw.calls[-1] == ("delete", 3210)


def test_any_port_choice_is_leased() -> None:
    gw = _ScriptedGateway(fail_ports={3210}, any_port=40000)
    mapper = PortMapper(3210, client_factory=lambda: gw)
    assert mapper.start(now=0.0) == [("192.168.9.2", 3210), ("11.0.0.9", 40000)]
    # the gateway's choice is re-added with our lease so that it expires if we die
    assert gw.calls == [("add", 3210, 1800), ("any",), ("add", 40000, 1800)]
    assert portmap.LEASE_SECS == 1800


# --- the daemon ---------------------------------------------------------------------------------------


@pytest.mark.netns
@needs_miniupnpd
def test_daemon_maps_its_port_and_removes_it_at_shutdown(upnp_lan: UpnpLan) -> None:
    node = VpnNode(upnp_lan.topo, upnp_lan.n1, upnp_lan.workdir, "n1", "--ip", "10.99.1.1/24", "-l", "3210")
    node.wait_running()
    assert wait_for(lambda: upnp_lan.mapped_to(f"{N1_IP}:3210"), 20) == [3210], node.log_text()
    st = wait_for(lambda: (s := node.status()) and f"{WAN_IP}:3210" in s.get("own_addresses", []) and s, 10)
    assert st, f"external address not among own addresses: {node.status()}"
    assert node.stop() == 0
    assert upnp_lan.mapped_to(f"{N1_IP}:3210") == [], node.log_text()


@pytest.mark.netns
@needs_miniupnpd
def test_no_port_forwarding_flag_leaves_no_mapping(upnp_lan: UpnpLan) -> None:
    node = VpnNode(
        upnp_lan.topo, upnp_lan.n1, upnp_lan.workdir, "n1", "--ip", "10.99.1.1/24", "--no-port-forwarding"
    )
    node.wait_running()
    # no event to await for "nothing happens": give it longer than a discovery takes
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert upnp_lan.dnat_ports() == []
        time.sleep(0.5)
    assert "M-SEARCH" not in upnp_lan.miniupnpd_log.read_text()
    assert node.stop() == 0
