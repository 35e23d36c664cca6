"""Shared helpers of the "reaching peers" tests (NAT, UPnP, beacons, WebSocket proxy).

Builds on :mod:`vpncloud.lab.netns` (namespaces, veths, teardown); adds what these tests need on top:
running real ``python -m vpncloud`` daemons in a namespace and reading their ``status --json``, NAT
routers, and running code of the test process inside a namespace (one thread at a time).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pyroute2.netns import setns

from vpncloud.lab.netns import Netns, Topology

PASSWORD = "reach-test-password"


@contextlib.contextmanager
def in_netns(ns: Netns) -> Iterator[None]:
    """Run the block with the calling thread inside ``ns``; sockets made there stay in ``ns``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(ns.name, flags=0)
        yield
    finally:
        setns(own, flags=0)
        os.close(own)


def wait_for(
    pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.2, *, what: str | None = None
) -> Any:
    """Poll ``pred`` until it returns something truthy (returned) or ``timeout`` passes.

    On timeout, without ``what`` the last (falsy) value comes back, for callers that assert on it with
    their own message or only wait for a side effect; with ``what`` it raises AssertionError naming
    what was awaited, so a test fails at the wait that stalled rather than somewhere later.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            if what is None:
                return value
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class VpnNode:
    """One real daemon (``python -m vpncloud``) running in a namespace."""

    def __init__(self, topo: Topology, ns: Netns, workdir: Path, name: str, *args: str) -> None:
        self.ns = ns
        self.name = name
        self.sock = workdir / f"{name}.sock"
        self.log = workdir / f"{name}.log"
        self.args = [
            sys.executable,
            "-m",
            "vpncloud",
            "-t",
            "tun",
            "--password",
            PASSWORD,
            "--control-socket",
            str(self.sock),
            "--log-file",
            str(self.log),
            *args,
        ]
        self.proc = topo.spawn(ns, self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status(self) -> dict[str, Any] | None:
        """``vpncloud status --json`` of this node, or None while it is not answering."""
        if not self.sock.exists():
            return None
        res = self.ns.run(
            [sys.executable, "-m", "vpncloud", "status", "--json", "--socket", str(self.sock)],
            check=False,
            timeout=15,
        )
        if res.returncode != 0:
            return None
        try:
            data: dict[str, Any] = json.loads(res.stdout)
        except json.JSONDecodeError:
            return None
        return data

    def peers(self) -> list[dict[str, Any]]:
        """The connected peers from the status (empty while not answering)."""
        st = self.status()
        return list(st.get("peers", [])) if st else []

    def peer_addrs(self) -> set[str]:
        """The socket addresses (nice form ``ip:port``) of all connected peers."""
        return {p["addr"] for p in self.peers()}

    def wait_running(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the control socket answers; fails with the log tail if the daemon died."""
        st = wait_for(lambda: self.proc.poll() is not None or self.status(), timeout)
        assert self.proc.poll() is None, f"{self.name} exited {self.proc.returncode}:\n{self.log_text()}"
        assert isinstance(st, dict), f"{self.name} does not answer status:\n{self.log_text()}"
        return st

    def log_text(self) -> str:
        """The daemon's log file (empty if not written yet)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def nat_router(
    topo: Topology,
    short: str,
    lan: Netns,
    wan: Netns,
    lan_cidr: str,
    wan_cidr: str,
    *,
    random_fully: bool = False,
    iptables: str = "iptables",
) -> Netns:
    """A router namespace: ``lan0`` on switch ``lan``, ``wan0`` on switch ``wan``, forwarding, MASQUERADE.

    ``random_fully`` makes the NAT symmetric in practice: every new (source, destination) pair gets
    a fresh random external port, so the port a third party observes is useless to anybody else.
    """
    rt = topo.namespace(short)
    topo.plug(rt, lan, ifname="lan0")
    topo.plug(rt, wan, ifname="wan0")
    rt.add_addr("lan0", lan_cidr)
    rt.add_addr("wan0", wan_cidr)
    rt.sysctl("net.ipv4.ip_forward", 1)
    rule = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE"]
    if random_fully:
        rule.append("--random-fully")
    rt.run([iptables, *rule])
    return rt


def home_firewall(rt: Netns) -> None:
    """Drop unsolicited inbound traffic on ``wan0`` like a home router: only replies pass.

    Without this, Linux would route the WAN side's packets
    for 10.241/10.242 straight in if anybody had a route, and the test would prove nothing.
    The INPUT rule matters too, and is what home routers do: an unsolicited packet to the
    router's own address is dropped before conntrack confirms an entry for it. Without it, the
    first hole-punching PING to arrive leaves an "unreplied" entry on the far router, and that
    router's MASQUERADE must then give its own node's outgoing PING a different source port
    (the tuple is taken), which breaks hole punching between two Linux NATs.
    """
    rt.iptables(
        "-A",
        "FORWARD",
        "-i",
        "wan0",
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "ACCEPT",
    )
    rt.iptables("-A", "FORWARD", "-i", "wan0", "-j", "DROP")
    rt.iptables(
        "-A", "INPUT", "-i", "wan0", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"
    )
    rt.iptables("-A", "INPUT", "-i", "wan0", "-j", "DROP")


def behind(topo: Topology, short: str, switch: Netns, cidr: str, gateway: str) -> Netns:
    """A host namespace on ``switch`` with ``cidr`` on ``eth0`` and a default route via ``gateway``."""
    ns = topo.namespace(short)
    topo.plug(ns, switch)
    ns.add_addr("eth0", cidr)
    ns.add_route("default", via=gateway)
    return ns


def udp_counter(ns: Netns, chain_rule: list[str]) -> int:
    """Packets counted by a ``-j ACCEPT``-less counting rule (see :func:`add_counter`)."""
    res = ns.run(["iptables", "-t", "filter", "-L", "FORWARD", "-n", "-v", "-x"], check=False)
    total = 0
    for line in res.stdout.splitlines():
        if all(tok in line for tok in chain_rule):
            total += int(line.split()[0])
    return total


def conntrack_udp(ns: Netns) -> list[str]:
    """UDP conntrack entries of a router namespace (one line each)."""
    res = ns.run(["conntrack", "-L", "-p", "udp"], check=False)
    return [line for line in res.stdout.splitlines() if line.startswith("udp")]
