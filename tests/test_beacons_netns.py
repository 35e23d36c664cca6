"""Beacons end to end (spec 15, 10.6): real daemons without static peers find each other.

Nodes on one LAN (10.243.0.0/24). The beacon files live in the test's temporary directory, which all
namespaces share (network namespaces do not separate file systems).
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from reach_support import VpnNode, wait_for

from vpncloud.core.beacon import decode_beacon, encode_beacon, hour_stamp, markers
from vpncloud.lab.netns import Topology

pytestmark = pytest.mark.netns

FIXTURES = Path(__file__).parent / "fixtures" / "vectors"
IP = {"a": "10.243.0.1", "b": "10.243.0.2", "c": "10.243.0.3"}
VPN = {"a": "10.99.3.1", "b": "10.99.3.2", "c": "10.99.3.3"}


def _nodes(topology: Topology, *names: str) -> dict:  # type: ignore[type-arg]
    return {n: topology.node(n, f"{IP[n]}/24") for n in names}


def test_nodes_find_each_other_through_a_beacon_file(topology: Topology, tmp_path: Path) -> None:
    ns = _nodes(topology, "a", "b")
    beacon = tmp_path / "a.beacon"
    common = ["--no-port-forwarding", "--beacon-interval", "2", "--beacon-password", "pw"]
    a = VpnNode(
        topology, ns["a"], tmp_path, "a", "--ip", f"{VPN['a']}/24", "--beacon-store", str(beacon), *common
    )
    b = VpnNode(
        topology, ns["b"], tmp_path, "b", "--ip", f"{VPN['b']}/24", "--beacon-load", str(beacon), *common
    )
    a.wait_running()
    b.wait_running()
    # a's beacon: begin/end markers of the password, mode 0444, one line (spec 15.6)
    assert wait_for(beacon.exists, 10)
    text = beacon.read_text()
    begin, end = markers("pw")
    assert text.startswith(begin) and text.endswith(end + "\n")
    assert stat.S_IMODE(os.stat(beacon).st_mode) == 0o444
    # b has no configured peer: it connects to what the beacon says, and a sees b
    assert wait_for(lambda: f"{IP['a']}:3210" in b.peer_addrs(), 20), b.log_text()
    assert wait_for(lambda: f"{IP['b']}:3210" in a.peer_addrs(), 10), a.log_text()
    assert (b.status() or {})["configured_peers"] == []
    assert wait_for(lambda: ns["b"].ping(VPN["a"]), 10)
    # shutdown deletes the store file (spec 10.6)
    assert a.stop() == 0
    assert not beacon.exists()
    assert b.stop() == 0


def test_nodes_find_each_other_through_beacon_commands(topology: Topology, tmp_path: Path) -> None:
    ns = _nodes(topology, "a", "b")
    shared = tmp_path / "published.txt"
    parts = tmp_path / "parts.txt"
    # store: the command gets begin/data/end/beacon in its environment; load: stdout is decoded
    store = f'|printf "%s %s %s\\n" "$begin" "$data" "$end" > {parts}; echo "Beacon: $beacon" > {shared}'
    load = f"|cat {shared}"
    common = ["--no-port-forwarding", "--beacon-interval", "2", "--beacon-password", "cmdpw"]
    a = VpnNode(topology, ns["a"], tmp_path, "a", "--ip", f"{VPN['a']}/24", "--beacon-store", store, *common)
    b = VpnNode(topology, ns["b"], tmp_path, "b", "--ip", f"{VPN['b']}/24", "--beacon-load", load, *common)
    a.wait_running()
    b.wait_running()
    assert wait_for(lambda: f"{IP['a']}:3210" in b.peer_addrs(), 20), b.log_text()
    begin, data, end = parts.read_text().split()
    assert (begin, end) == markers("cmdpw")
    assert shared.read_text().strip() == f"Beacon: {begin}{data}{end}"
    assert (IP["a"], 3210) in {
        (h.removeprefix("::ffff:"), p) for h, p in decode_beacon(shared.read_text(), "cmdpw", None, 0)
    }
    assert wait_for(lambda: ns["a"].ping(VPN["b"]), 10)
    assert a.stop() == 0 and b.stop() == 0


def test_wrong_beacon_password_finds_nobody(topology: Topology, tmp_path: Path) -> None:
    ns = _nodes(topology, "a", "b")
    beacon = tmp_path / "a.beacon"
    a = VpnNode(
        topology,
        ns["a"],
        tmp_path,
        "a",
        "--no-port-forwarding",
        "--beacon-interval",
        "1",
        "--beacon-password",
        "right",
        "--beacon-store",
        str(beacon),
    )
    b = VpnNode(
        topology,
        ns["b"],
        tmp_path,
        "b",
        "--no-port-forwarding",
        "--beacon-interval",
        "1",
        "--beacon-password",
        "wrong",
        "--beacon-load",
        str(beacon),
    )
    a.wait_running()
    b.wait_running()
    assert wait_for(beacon.exists, 10)
    # b loads a's beacon several times (an event we can await) and decodes nothing from it
    assert wait_for(lambda: b.log_text().count("Loaded beacon with peers: -") >= 3, 20), b.log_text()
    assert b.peers() == [] and a.peers() == []
    assert a.stop() == 0 and b.stop() == 0


def test_our_beacon_matches_the_reference_binary(topology: Topology, tmp_path: Path) -> None:
    """Run our node with the captured node1's arguments; its beacon carries the same addresses as
    the real binary's (tests/fixtures/vectors/beacon.node1.beacon.txt) and the same encoding."""
    reference = (FIXTURES / "beacon.node1.beacon.txt").read_text()
    ref_addrs = decode_beacon(reference, "test", None, 0)
    assert ref_addrs, "the captured beacon must decode"
    node = topology.node("n1", "10.240.0.1/24")
    beacon = tmp_path / "node1.beacon"
    ours = VpnNode(
        topology,
        node,
        tmp_path,
        "n1",
        "--ip",
        "10.241.0.1/24",
        "-l",
        "3210",
        "--no-port-forwarding",
        "--beacon-store",
        str(beacon),
        "--beacon-password",
        "test",
        "--beacon-interval",
        "10",
        "--advertise_addresses",
        "10.240.0.1",
    )
    ours.wait_running()
    assert wait_for(beacon.exists, 10)
    text = beacon.read_text()
    now_hour = hour_stamp(time.monotonic())
    # hour stamp from the monotonic clock (quirk 25.3): accepted with a TTL of 0 hours
    addrs = decode_beacon(text, "test", 0, now_hour)
    assert sorted(addrs) == sorted(ref_addrs), (addrs, ref_addrs)
    # the very same encoding: re-encoding the decoded entries with the hour reproduces the file
    assert encode_beacon(addrs, "test", now_hour) == text.strip()
    # and both carry the markers of the spec's derivation for this password
    begin, end = markers("test")
    assert reference.startswith(begin) and text.startswith(begin)
    assert reference.strip().endswith(end) and text.strip().endswith(end)
    assert ours.stop() == 0


def test_spec_vector_password_markers(topology: Topology, tmp_path: Path) -> None:
    """Spec 22.8: password ``mysecretkey`` -> begin ``WsHI3``, end ``ik22E``, written by our daemon."""
    node = topology.node("n1", "10.243.0.9/24")
    beacon = tmp_path / "v.beacon"
    ours = VpnNode(
        topology,
        node,
        tmp_path,
        "n1",
        "--no-port-forwarding",
        "--beacon-store",
        str(beacon),
        "--beacon-password",
        "mysecretkey",
        "--beacon-interval",
        "10",
    )
    ours.wait_running()
    assert wait_for(beacon.exists, 10)
    text = beacon.read_text().strip()
    assert text.startswith("WsHI3") and text.endswith("ik22E")
    assert ("::ffff:10.243.0.9", 3210) in decode_beacon(text, "mysecretkey", None, 0)
    assert ours.stop() == 0
