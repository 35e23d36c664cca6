"""``vpncloud lab status --dot``: the lab mesh as Graphviz DOT, rendered with ``dot`` when installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import test_lab
from test_lab import _example, _lab_cli, needs_daemon

from vpncloud.lab import lab
from vpncloud.lab.dot import lab_dot, write_dot

# the lab tests' fixtures: a short private state root and a lab name cleaned up afterwards
lab_root = test_lab.lab_root
lab_name = test_lab.lab_name


def three_nodes() -> lab.LabStatus:
    """a and b see each other, c sees a but a does not see c, nobody sees b-c; c is down."""

    def node(name: str, peers: list[str], *, running: bool = True) -> lab.NodeStatus:
        return lab.NodeStatus(
            name=name,
            namespace=f"vcl-x.{name}",
            pid=10 if running else None,
            running=running,
            underlay=f"10.0.0.{ord(name) - 96}",
            vpn_ip=f"10.9.0.{ord(name) - 96}",
            node_id=name * 32,
            peers=[lab.PeerStatus(addr=f"10.0.0.{ord(p) - 96}:3210", name=p) for p in peers],
            error=None if running else "not running",
        )

    return lab.LabStatus(
        name="x",
        state_dir="/tmp/x",
        whole=False,
        nodes=[node("a", ["b"]), node("b", ["a"]), node("c", ["a"], running=False)],
    )


def test_dot_shows_links_and_missing_links_in_red() -> None:
    text = lab_dot(three_nodes())
    assert text.startswith('graph "lab x" {')
    assert '"a" -- "b";' in text
    assert '"a" -- "c" [color=red, style=dashed, fontcolor=red, label="a lacks it"];' in text
    assert '"b" -- "c" [color=red, style=dashed, fontcolor=red, label="missing"];' in text
    assert '"c" [label="c\\n10.9.0.3\\ncccccccc", color=red, fontcolor=red];' in text
    assert "NOT whole" in text


def test_dot_renders_to_svg(tmp_path: Path) -> None:
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("Graphviz `dot` not installed (Debian package 'graphviz'; scripts/setup.sh installs it)")
    written = write_dot(three_nodes(), tmp_path / "mesh.dot")
    assert written == [tmp_path / "mesh.dot", tmp_path / "mesh.dot.svg"]
    svg = written[1].read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert svg.count('class="node"') == 3 and svg.count('class="edge"') == 3
    # what dot itself parses back: the same graph
    plain = subprocess.run([dot, "-Tplain", str(written[0])], capture_output=True, text=True, check=True)
    assert plain.stdout.count("\nedge ") == 3


@pytest.mark.netns
@needs_daemon
def test_dot_of_a_running_lab(lab_root: Path, lab_name: str, tmp_path: Path) -> None:
    try:
        assert lab.lab_up(_example(lab_name), lab_root, timeout=60).whole
        out = tmp_path / "mesh.dot"
        res = _lab_cli(lab_root, "status", lab_name, "--no-ping", "--dot", str(out))
        assert res.returncode == 0, res.stdout + res.stderr
        text = out.read_text()
        assert text.count(" -- ") == 3 and "red" not in text  # the example lab is a whole mesh of 3
        if shutil.which("dot"):
            assert "<svg" in (tmp_path / "mesh.dot.svg").read_text()
    finally:
        lab.lab_down(lab_name, lab_root)


def test_relayed_links_get_their_own_style() -> None:
    status = three_nodes()
    a, b, c = status.nodes
    c.running, c.error, c.pid, c.peers = True, None, 10, [lab.PeerStatus(addr="10.0.0.1:3210", name="a")]
    # a reaches b through c (the node's `status --json` relay object); the other links are direct
    a.daemon = {"relay": {"relayed_peers": [{"addr": "[100::1]:1", "relay": "c" * 32, "node_id": "b" * 32}]}}
    b.daemon = {"relay": {"relayed_peers": [{"relay": 7}, "junk"]}}  # malformed entries are skipped
    a.peers.append(lab.PeerStatus(addr="10.0.0.3:3210", name="c"))
    text = lab_dot(status)
    assert '"a" -- "b" [color=blue, style=dotted, fontcolor=blue, label="via c"];' in text
    assert '"a" -- "c";' in text
