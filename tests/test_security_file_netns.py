"""The daemon loads the security file (ACL, key expiry) written by `vpncloud apply`, and reloads it on SIGHUP.

Real daemons in network namespaces: an ACL that allows only SSH between the two VPN addresses stops
ping through the tunnel; a reloaded file that also allows ICMP lets it through, without a restart.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import yaml
from conftest import Lan
from reach_support import VpnNode, wait_for

pytestmark = pytest.mark.netns

VPN = {"a": "10.99.7.1", "b": "10.99.7.2"}


def _write(path: Path, *, icmp: bool) -> None:
    rules = [{"src": [f"{VPN['a']}/32"], "dst": [f"{VPN['b']}/32"], "proto": "tcp", "ports": [22]}]
    if icmp:
        rules.append({"src": [f"{VPN['a']}/32"], "dst": [f"{VPN['b']}/32"], "proto": "icmp"})
    path.write_text(yaml.safe_dump({"version": 1, "acl": {"rules": rules}}))


def test_acl_from_security_file_enforced_and_reloaded(lan3: Lan, tmp_path: Path) -> None:
    sec = tmp_path / "net.security.yaml"
    _write(sec, icmp=False)
    common = ["--no-port-forwarding", "--security-file", str(sec)]
    b = VpnNode(lan3.topo, lan3.nodes["b"], tmp_path, "b", "--ip", f"{VPN['b']}/24", *common)
    a = VpnNode(
        lan3.topo,
        lan3.nodes["a"],
        tmp_path,
        "a",
        "--ip",
        f"{VPN['a']}/24",
        "-c",
        f"{lan3.v4['b']}:3210",
        *common,
    )
    a.wait_running()
    b.wait_running()
    assert wait_for(lambda: a.peers() and b.peers(), 30), a.log_text()
    assert "ACL enforced" in a.log_text()
    # the session is up, but the ACL has no rule for ICMP
    assert not lan3.nodes["a"].ping(VPN["b"], count=2, timeout=1)
    _write(sec, icmp=True)
    for node in (a, b):
        node.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: lan3.nodes["a"].ping(VPN["b"], timeout=1), 20), a.log_text()
    assert a.proc.poll() is None and b.proc.poll() is None


def test_missing_security_file_named_on_the_command_line_is_fatal(lan3: Lan, tmp_path: Path) -> None:
    node = VpnNode(
        lan3.topo, lan3.nodes["a"], tmp_path, "a", "--no-port-forwarding", "--security-file",
        str(tmp_path / "missing.yaml"),
    )  # fmt: skip
    assert node.proc.wait(30) == 255
    assert "missing.yaml does not exist" in node.log_text()
