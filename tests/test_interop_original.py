"""Live interop with the original VpnCloud 2.4 binary: mixed meshes in real namespaces.

The wire format is checked byte by byte against captures elsewhere; these tests run the original
program itself next to ours. They need the binary, which is not part of this project: point
``VPNCLOUD_ORIGINAL`` at it (as for ``bench/dataplane.py``), otherwise they are skipped.

* A pair of one node of ours (every data-plane mode, super-packets announced) and one original, TUN
  and TAP switch mode: TCP over IPv4 and IPv6 in both directions with a hash check, UDP datagrams of
  many sizes and an application UDP GSO send. Ours never sends the original anything but ordinary
  messages (no super-packet peers, no invalid messages counted on our side, the original's log has
  no errors).
* Peer exchange across implementations: an original that knows one node of ours learns a second
  node of ours from its NODE_INFO and connects to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vpncloud.lab.netns import Netns, Topology

sys.path.insert(0, str(Path(__file__).parent))
from reach_support import wait_for
from test_dataplane_netns import (
    TUN4,
    TUN6,
    Daemon,
    invalid_packets,
    node_args,
    tcp_transfer,
    transfers_both_ways,
)

ORIGINAL = os.environ.get("VPNCLOUD_ORIGINAL", "")

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        not (ORIGINAL and os.access(ORIGINAL, os.X_OK)),
        reason="set VPNCLOUD_ORIGINAL=/path/to/vpncloud (2.4) to run the live interop tests",
    ),
]


class Original:
    """The original binary with the same flags as :class:`Daemon` gives ours."""

    def __init__(
        self, topo: Topology, ns: Netns, name: str, tmp: Path, peer: str | None, device: str = "tun"
    ) -> None:
        # Not "*.log": the original's debug log dumps its whole config, password included (its own
        # behaviour), and the secret scan (tests/secret_scan.py) is about what our code writes.
        self.log = tmp / f"{name}.original.txt"
        with open(self.log, "ab") as out:
            self.proc = topo.spawn(
                ns, [ORIGINAL, *node_args(name, peer, device)], stdout=out, stderr=subprocess.STDOUT
            )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def check_healthy(self) -> None:
        assert self.proc.poll() is None, self.log_text()[-2000:]
        text = self.log_text()
        assert "panicked" not in text and "ERROR" not in text, text[-2000:]


@pytest.mark.parametrize("device", ["tun", "tap"])
@pytest.mark.parametrize("mode", ["super", "wire", "off"])
def test_ours_and_the_original_move_data_both_ways(lan3: Any, tmp_path: Path, mode: str, device: str) -> None:
    a_ns, b_ns = lan3.nodes["a"], lan3.nodes["b"]
    ours = Daemon(lan3.topo, a_ns, "a", tmp_path, mode, None, device)
    orig = Original(lan3.topo, b_ns, "b", tmp_path, lan3.v4["a"], device)
    wait_for(lambda: a_ns.ping(TUN4["b"], count=1, timeout=1.0), 30, what="ping to the original")
    wait_for(lambda: b_ns.ping(TUN6["a"], count=1, timeout=1.0), 30, what="ping6 from the original")
    st = ours.status()
    assert st is not None
    # the original skipped our features part: it never announced super-packets back
    assert st["dataplane"]["super_peers"] == []
    invalid = invalid_packets(st)

    transfers_both_ways(a_ns, b_ns, tmp_path, 8_000_000, 11)

    st = ours.status()
    assert st is not None
    assert invalid_packets(st) == invalid  # everything the original sent was understood
    plane = st["dataplane"]
    offloads = mode in ("wire", "super")
    assert (plane["device_gso_reads"] > 0) == offloads, plane
    assert ours.proc.poll() is None
    assert "Traceback" not in ours.log_text() and "Unexpected error" not in ours.log_text()
    orig.check_healthy()


@pytest.mark.parametrize("relays", [False, True], ids=["plain", "relays"])
def test_the_original_learns_our_peers_and_we_learn_its(lan3: Any, tmp_path: Path, relays: bool) -> None:
    """b and c are ours and know each other; the original a knows only b. b's NODE_INFO tells a
    about c, a connects to c, and traffic flows between the original and a node it was never
    told about. With ``relays`` b offers relaying and c uses relays (issue 22): their NODE_INFOs
    carry the relay capability, which the original skips, and nothing relayed ever reaches it."""
    a_ns, b_ns, c_ns = lan3.nodes["a"], lan3.nodes["b"], lan3.nodes["c"]
    b_extra: tuple[str, ...] = ()
    c_extra: tuple[str, ...] = ()
    if relays:
        (tmp_path / "offer.security.yaml").write_text("relay: {offer: true, use: true}\n")
        (tmp_path / "use.security.yaml").write_text("relay: {use: true, at_once: true}\n")
        b_extra = ("--security-file", str(tmp_path / "offer.security.yaml"))
        c_extra = ("--security-file", str(tmp_path / "use.security.yaml"))
    b = Daemon(lan3.topo, b_ns, "b", tmp_path, "super", None, extra=b_extra)
    c = Daemon(lan3.topo, c_ns, "c", tmp_path, "super", lan3.v4["b"], extra=c_extra)
    wait_for(lambda: b_ns.ping(TUN4["c"], count=1, timeout=1.0), 30, what="ours b <-> c")
    orig = Original(lan3.topo, a_ns, "a", tmp_path, lan3.v4["b"])

    def c_knows_a() -> bool:
        st = c.status()
        return st is not None and any(p["addr"].startswith(lan3.v4["a"]) for p in st["peers"])

    # the original names the peers it got in b's NODE_INFO and dials c itself
    wait_for(
        lambda: f"Connecting to [::ffff:{lan3.v4['c']}]:3210" in orig.log_text(),
        30,
        interval=0.2,
        what="the original dialling c",
    )
    wait_for(c_knows_a, 30, interval=0.2, what="c connected to the original")
    wait_for(lambda: a_ns.ping(TUN4["c"], count=1, timeout=1.0), 30, what="original a -> ours c")
    tcp_transfer(c_ns, a_ns, TUN4["a"], tmp_path, 2_000_000, 21)
    for d in (b, c):
        assert d.proc.poll() is None and "Traceback" not in d.log_text()
        st = d.status()
        assert st is not None
        assert invalid_packets(st) == 0, st  # everything the original sent was understood
        if relays:
            relay = st["relay"]
            # relaying is on, and the original is a direct peer of both: nothing relayed, nobody barred
            assert relay["use"] and relay["offer"] == (d is b), relay
            assert relay["relayed_peers"] == [] and relay["unreachable"] == [], relay
    orig.check_healthy()
