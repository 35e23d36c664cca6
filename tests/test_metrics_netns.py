"""``--metrics-listen`` on a real daemon in a namespace: scraped over HTTP, the counters follow real
traffic through the tunnel and real dropped datagrams, agree with ``status``, and pass promtool."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from reach_support import in_netns, wait_for
from test_daemon_netns import PASSWORD, PY, SNIFF, SPOOF, VNode, full_mesh, ping
from test_metrics import Samples, parse

from vpncloud.daemon.metrics import FAMILIES
from vpncloud.lab.netns import Netns

pytestmark = pytest.mark.netns


def fetch(ns: Netns, port: int) -> str:
    with in_netns(ns), urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


def pair(lan3: Any, tmp_path: Path, listen: str) -> tuple[VNode, VNode]:
    """``a`` serving metrics on ``listen``, ``b`` connected to it, the tunnel up."""
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    a_ns.link_up("lo")
    a_args = ["-p", PASSWORD, "--ip", "10.100.0.1/24", "--metrics-listen", listen]
    a = VNode(lan3.topo, a_ns, "a", tmp_path, a_args)
    b_args = ["-p", PASSWORD, "--ip", "10.100.0.2/24", "-c", f"{lan3.v4['a']}:3210"]
    b = VNode(lan3.topo, b_ns, "b", tmp_path, b_args)
    full_mesh([a, b])
    wait_for(lambda: ping(a_ns, "10.100.0.2"), interval=0.1, what="tunnel")
    return a, b


def test_metrics_endpoint_of_a_real_daemon(lan3: Any, tmp_path: Path) -> None:
    v4 = lan3.v4
    a_ns, b_ns, c_ns = lan3.nodes["a"], lan3.nodes["b"], lan3.nodes["c"]
    a, b = pair(lan3, tmp_path, "9100")
    assert "Serving metrics on http://127.0.0.1:9100/metrics" in a.log_text()
    peer = b.node_id()

    m = parse(fetch(a_ns, 9100))
    assert set(m) == set(FAMILIES)  # the declaration the dashboard test checks against
    assert m["vpncloud_peers_connected"][()] == 1
    assert m["vpncloud_handshakes_total"][(("result", "completed"),)] >= 1
    (info,) = m["vpncloud_info"]
    assert dict(info)["node_id"] == a.node_id()

    def traffic(s: Samples, kind: str, direction: str) -> float:
        return s[f"vpncloud_peer_traffic_{kind}_total"][(("direction", direction), ("peer", peer))]

    # real traffic: 10 pings through the tunnel move bytes and packets both ways
    assert a_ns.ping("10.100.0.2", count=10, timeout=10.0)
    m2 = parse(fetch(a_ns, 9100))
    for direction in ("in", "out"):
        assert traffic(m2, "packets", direction) >= traffic(m, "packets", direction) + 10
        assert traffic(m2, "bytes", direction) >= traffic(m, "bytes", direction) + 10 * 84
    assert m2["vpncloud_payload_packets_total"][(("direction", "out"),)] >= 10

    # the same numbers as status: drops and handshakes exactly, traffic between two status reads
    st1 = a.status()
    m3 = parse(fetch(a_ns, 9100))
    st2 = a.status()
    assert st1 is not None and st2 is not None
    for reason, count in st2["traffic"]["drops"].items():
        assert m3["vpncloud_dropped_packets_total"][(("reason", reason),)] == count
    for result, count in st2["handshakes"].items():
        assert m3["vpncloud_handshakes_total"][(("result", result),)] == count
    (addr,) = [p["addr"] for p in st2["peers"]]
    assert (
        st1["traffic"]["peers"][addr]["in_bytes_total"]
        <= traffic(m3, "bytes", "in")
        <= st2["traffic"]["peers"][addr]["in_bytes_total"]
    )

    def drops(reason: str) -> float:
        return parse(fetch(a_ns, 9100))["vpncloud_dropped_packets_total"][(("reason", reason),)]

    # garbage UDP from an address without a session
    before = drops("unknown_peer")
    garbage = ["01" + "ab" * n for n in (10, 40, 300)]
    c_ns.run([PY, "-c", SPOOF, v4["c"], v4["a"], "4000", "3210", *garbage])
    wait_for(lambda: drops("unknown_peer") >= before + 3, 10, interval=0.2, what="garbage counted")
    assert set(parse(fetch(a_ns, 9100))["vpncloud_peer_traffic_bytes_total"]) <= {
        (("direction", d), ("peer", p)) for d in ("in", "out") for p in (peer, "other")
    }

    # a captured session frame b -> a, replayed from b's address once the replay window moved on
    sniffer = a_ns.popen([PY, "-c", SNIFF, v4["b"]], stdout=subprocess.PIPE)
    wait_for(lambda: ping(a_ns, "10.100.0.2") and sniffer.poll() is not None, 20, what="captured frame")
    frame = sniffer.stdout.read().decode().strip() if sniffer.stdout else ""
    assert len(frame) > 100
    before = drops("replay")

    def replayed() -> bool:
        b_ns.run([PY, "-c", SPOOF, v4["b"], v4["a"], "3210", "3210", frame])
        return drops("replay") > before

    wait_for(replayed, 20, interval=0.5, what="replay counted")
    assert a.alive() and "Traceback" not in a.log_text()

    # a second daemon asking for the same endpoint stops at startup with one clear line
    dup = VNode(lan3.topo, a_ns, "dup", tmp_path, ["-p", PASSWORD, "-l", "3299", "--metrics-listen", "9100"])
    assert dup.proc is not None and dup.proc.wait(timeout=20) == 255
    assert "Failed to open metrics endpoint 127.0.0.1:9100: Address already in use" in dup.log_text()
    assert a.alive()


def test_promtool_accepts_the_exposition(lan3: Any, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; scripts/setup.sh installs it)")
    pair(lan3, tmp_path, ":9101")
    text = fetch(lan3.nodes["a"], 9101)
    assert "vpncloud_peer_traffic_bytes_total{" in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_daemonized_unprivileged_node_serves_a_low_port(lan3: Any, tmp_path: Path) -> None:
    # the socket is bound before the privilege drop and the fork; the thread starts in the child
    a_ns = lan3.nodes["a"]
    a_ns.link_up("lo")
    os.chmod(tmp_path, 0o755)
    pid_file = tmp_path / "a.pid"
    r = a_ns.run(
        [PY, "-m", "vpncloud", "--no-port-forwarding", "-p", PASSWORD, "--ip", "10.100.0.1/24",
         "--daemon", "--pid-file", str(pid_file), "--log-file", str(tmp_path / "a.log"),
         "--control-socket", str(tmp_path / "a.sock"), "--user", "nobody", "--group", "nogroup",
         "--metrics-listen", "127.0.0.1:91"],
        check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, what="pid file"))
    try:
        text = wait_for(lambda: _try_fetch(a_ns, 91), 10, interval=0.2, what="metrics of the daemon")
        assert parse(text)["vpncloud_peers_connected"][()] == 0
        status_line = next(
            x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:")
        )
        assert status_line.split()[1] == "65534"
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, interval=0.1, what="daemon exit")


def _try_fetch(ns: Netns, port: int) -> str | None:
    try:
        return fetch(ns, port)
    except OSError:
        return None
