"""Real network namespaces: creation, bridge LAN, teardown on exit/exception/signal, stale cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from reach_support import wait_for

from vpncloud.lab import netns
from vpncloud.lab.netns import NetnsError, Topology

pytestmark = pytest.mark.netns


def test_namespaces_exist_inside_and_are_gone_after() -> None:
    with Topology() as topo:
        a = topo.namespace("a")
        b = topo.namespace("b")
        names = netns.list_netns()
        assert a.name in names and b.name in names
        assert a.name.startswith(topo.prefix) and a.name != b.name
        assert "lo" in a.links()
        proc = topo.spawn(a, ["sleep", "300"])
        # `ip netns exec` enters the namespace after fork, so the pid shows up there a moment later.
        wait_for(lambda: proc.pid in netns.netns_pids(a.name), what=f"pid {proc.pid} inside {a.name}")
    names = netns.list_netns()
    assert a.name not in names and b.name not in names
    assert proc.poll() is not None


def test_prefixes_are_unique() -> None:
    prefixes = {netns.new_prefix() for _ in range(50)}
    assert len(prefixes) == 50
    assert all(p.startswith(netns.DEFAULT_PREFIX_BASE) and p.endswith("-") for p in prefixes)


def test_ping_across_bridge_v4_and_v6(lan3) -> None:  # type: ignore[no-untyped-def]
    a, c = lan3.nodes["a"], lan3.nodes["c"]
    assert a.ping(lan3.v4["c"])
    assert c.ping(lan3.v6["a"])
    assert f"{lan3.v4['a']}/24" in a.addresses("eth0")
    # The bridge lives in the switch namespace, never on the host.
    assert "br0" in lan3.switch.links()
    assert "br0" not in a.links()
    # Default route exists: a route lookup for an arbitrary address picks eth0 and the own address.
    out = a.ip("-4", "route", "get", "192.0.2.1").stdout
    assert "dev eth0" in out and f"src {lan3.v4['a']}" in out
    out6 = a.ip("-6", "route", "get", "2001:db8::1").stdout
    assert "dev eth0" in out6


def test_unreachable_address_fails_ping(lan3) -> None:  # type: ignore[no-untyped-def]
    assert not lan3.nodes["a"].ping("10.201.0.99", timeout=1)


def test_sysctl_and_iptables_inside_namespace(topology: Topology) -> None:
    sw = topology.switch()
    a = topology.node("a", "10.202.0.1/24")
    b = topology.node("b", "10.202.0.2/24")
    assert a.ping("10.202.0.2")
    a.sysctl("net.ipv4.ip_forward", 1)
    assert a.read_sysctl("net.ipv4.ip_forward") == "1"
    b.iptables("-A", "INPUT", "-p", "icmp", "-j", "DROP")
    assert "icmp" in b.iptables("-S", "INPUT").stdout
    assert not a.ping("10.202.0.2")
    b.iptables("-F", "INPUT")
    assert a.ping("10.202.0.2")
    assert sw.exists()


def test_teardown_on_exception_kills_processes() -> None:
    topo = Topology()
    with pytest.raises(RuntimeError, match="boom"), topo:
        a = topo.node("a", "10.203.0.1/24")
        proc = topo.spawn(a, ["sleep", "300"])
        # A process started some other way inside the namespace is killed too.
        stray = subprocess.Popen(a.exec_args(["sleep", "300"]))
        raise RuntimeError("boom")
    assert not [n for n in netns.list_netns() if n.startswith(topo.prefix)]
    assert proc.poll() is not None
    assert stray.wait(timeout=5) is not None


def test_teardown_on_sigint_and_sigterm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for sig in (signal.SIGINT, signal.SIGTERM):
        prefix = netns.new_prefix()
        ready = tmp_path / f"ready{sig}"
        script = textwrap.dedent(
            f"""
            import pathlib, time
            from vpncloud.lab.netns import Topology
            with Topology({prefix!r}) as t:
                n = t.node("a", "10.204.0.1/24")
                t.spawn(n, ["sleep", "300"])
                pathlib.Path({str(ready)!r}).write_text("x")
                time.sleep(120)
            """
        )
        child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
        try:
            assert wait_for(ready.exists, 20, interval=0.05), "child never built its topology"
            assert any(n.startswith(prefix) for n in netns.list_netns())
            os.kill(child.pid, sig)
            child.wait(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
            netns.cleanup_stale(prefix)
        assert child.returncode != 0  # interrupted, not a normal exit
        assert not [n for n in netns.list_netns() if n.startswith(prefix)]


def test_cleanup_stale_removes_leftovers() -> None:
    prefix = netns.new_prefix()
    topo = Topology(prefix)
    a = topo.node("a", "10.205.0.1/24")
    proc = topo.spawn(a, ["sleep", "300"])
    # Simulate a crash: forget the topology without closing it.
    assert {prefix + "a", prefix + "sw"} <= set(netns.list_netns())
    other = Topology()
    try:
        keep = other.namespace("x")
        gone = netns.cleanup_stale(prefix)
        assert sorted(gone) == sorted([prefix + "a", prefix + "sw"])
        assert proc.wait(timeout=5) is not None
        assert not [n for n in netns.list_netns() if n.startswith(prefix)]
        assert keep.exists(), "cleanup_stale must not touch other prefixes"
        assert netns.cleanup_stale(prefix) == []
    finally:
        other.close()
        topo.close()  # idempotent after external cleanup


def test_bad_names_are_clear_errors(topology: Topology) -> None:
    with pytest.raises(NetnsError, match="interface name"):
        topology.veth(topology.namespace("a"), "x" * 16, topology.namespace("b"), "y")
    with pytest.raises(NetnsError, match="namespace name"):
        netns.create_netns("bad/name")
    with pytest.raises(NetnsError, match="non-empty"):
        netns.cleanup_stale("")
    with pytest.raises(NetnsError, match="already"):
        topology.namespace("a")
    with pytest.raises(NetnsError, match="failed"):
        topology["a"].add_addr("nosuchif", "10.0.0.1/24")
