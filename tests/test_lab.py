"""``vpncloud lab``: lab-file parsing, failure paths, and a real 3-node mesh in namespaces."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from vpncloud.lab import cli as lab_cli
from vpncloud.lab import lab, netns
from vpncloud.lab.lab import LabError, LabNode, LabSpec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "inventories" / "lab" / "lab.yaml"


def _daemon_missing() -> str | None:
    """Why the real daemon cannot run a node yet (None when it can)."""
    needed = [
        "vpncloud/__main__.py",
        "vpncloud/core/node.py",
        "vpncloud/daemon/control.py",
        "vpncloud/daemon/loop.py",
    ]
    missing = [p for p in needed if not (REPO / p).exists()]
    return f"daemon not built yet: {', '.join(missing)} missing" if missing else None


needs_daemon = pytest.mark.skipif(_daemon_missing() is not None, reason=_daemon_missing() or "")


# --------------------------------------------------------------------------------------------------
# Parsing (no root needed)
# --------------------------------------------------------------------------------------------------


def test_example_lab_file() -> None:
    spec = load_spec(EXAMPLE)
    assert spec.names() == ["a", "b", "c"]
    assert [spec.vpn_ip(n) for n in spec.nodes] == ["10.99.0.1", "10.99.0.2", "10.99.0.3"]
    b_addr = f"{spec.node('b').address}:3210"
    for n in spec.nodes:
        cfg = spec.node_config(n)
        assert cfg["mode"] == "router"
        assert cfg["device"]["type"] == "tun"
        assert cfg["crypto"]["password"]
        assert cfg["port-forwarding"] is False
    # a and c know only b; b knows nobody (it learns a and c when they connect).
    assert spec.node_config(spec.node("a"))["peers"] == [b_addr]
    assert spec.node_config(spec.node("c"))["peers"] == [b_addr]
    assert "peers" not in spec.node_config(spec.node("b"))


def test_defaults_merge_and_peer_names() -> None:
    spec = parse_spec(
        """
name: m1
underlay: {subnet: 10.50.0.0/24, subnet6: "fd50::/64"}
common: {crypto: {password: x, algorithms: [aes256]}, mode: router}
nodes:
  - {name: a, config: {ip: 10.60.0.1/24, peers: [b, "c:4000", "192.0.2.9:1"], crypto: {password: y}}}
  - {name: b, config: {ip: 10.60.0.2}}
  - {name: c, address: 10.50.0.77, config: {listen: 4000}}
"""
    )
    a, b, c = spec.nodes
    assert (str(a.address), str(b.address), str(c.address)) == ("10.50.0.1", "10.50.0.2", "10.50.0.77")
    assert str(a.address6) == "fd50::1" and str(c.address6) == "fd50::3"
    cfg = spec.node_config(a)
    # Mappings merge, the node's scalar wins, common keys the node does not set stay.
    assert cfg["crypto"] == {"password": "y", "algorithms": ["aes256"]}
    assert cfg["mode"] == "router"
    assert cfg["peers"] == ["10.50.0.2:3210", "10.50.0.77:4000", "192.0.2.9:1"]
    assert spec.vpn_ip(b) == "10.60.0.2"
    assert spec.vpn_ip(c) is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\nnodes: [a, b\n", "broken.yaml:3: invalid YAML"),
        ("name: x\n  bad: indent\n", "invalid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("", "expected a mapping"),
        ("name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: []\n", "nodes"),
        ("name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a}]\ntypo: 1\n", "typo"),
        ("name: Bad_Name\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a}]\n", "name"),
        ("name: x\nunderlay: {subnet: 10.0.0.0/33}\nnodes: [{name: a}]\n", "underlay.subnet"),
        (
            "name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a}, {name: a}]\n",
            "duplicate node names: a",
        ),
        (
            "name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a, address: 10.1.0.1}]\n",
            "not a host of",
        ),
        (
            "name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a, address: 10.0.0.0}]\n",
            "not a host of",
        ),
        ("name: x\nunderlay: {subnet: 10.0.0.0/30}\nnodes: [{name: a}, {name: b}, {name: c}]\n", "too small"),
        ("name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a, config: {ip: nope}}]\n", "config ip"),
        (
            "name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a, config: {peers: b}}]\n",
            "peers must be",
        ),
        (
            "name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a, config: {peers: [10.0.0.300]}}]\n",
            "node a: config peers: 10.0.0.300 is not a valid IPv4 address",
        ),
        (
            "name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a, config: {peers: ['b:99999']}}]\n",
            "node a: config peers: port '99999' of 'b:99999'",
        ),
        ("name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: a, address6: 'fd00::1'}]\n", "subnet6"),
        (
            "name: x\nunderlay: {subnet: 10.0.0.0/24}\nnodes: [{name: averyveryverylongname}]\n",
            "broken.yaml:3: nodes[0].name: String should match pattern",
        ),
        (
            "name: x\nunderlay: {subnet: 10.0.0.0/24}\n"
            "nodes: [{name: a, address: 10.0.0.5}, {name: b, address: 10.0.0.5}]\n",
            "duplicate underlay address",
        ),
    ],
)
def test_broken_lab_files_give_clear_errors(text: str, needle: str) -> None:
    with pytest.raises(LabError) as info:
        parse_spec(text, "broken.yaml")
    msg = str(info.value)
    assert msg.startswith("broken.yaml:")
    assert needle in msg
    assert "Traceback" not in msg


def test_missing_file_and_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(LabError, match="cannot read lab file"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: [a, b\n")
    assert lab_cli.main(["up", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}:3: invalid YAML" in err and "Traceback" not in err
    # status/down of a lab that is not up: clear message, not a crash.
    assert lab_cli.main(["--state-dir", str(tmp_path), "status", "nolab"]) == 2
    assert "is not up" in capsys.readouterr().err


def test_status_rendering_without_root() -> None:
    from io import StringIO

    from rich.console import Console

    st = lab.LabStatus(
        name="x",
        state_dir="/tmp/x",
        whole=False,
        nodes=[
            lab.NodeStatus(
                name="a",
                namespace="vcl-x.a",
                pid=10,
                running=True,
                underlay="10.0.0.1",
                vpn_ip="10.9.0.1",
                peers=[lab.PeerStatus(addr="10.0.0.2:3210", name="b")],
            ),
            lab.NodeStatus(
                name="b",
                namespace="vcl-x.b",
                pid=None,
                running=False,
                underlay="10.0.0.2",
                error="not running",
            ),
        ],
        ping={"a": {"b": False}, "b": {"a": None}},
    )
    assert st.missing_links() == [("b", "a")]
    assert not st.ping_ok
    buf = StringIO()
    lab_cli.render(st, Console(file=buf, width=200, color_system=None))
    out = buf.getvalue()
    assert "NOT whole" in out and "FAIL" in out and "not running" in out


def test_state_dir_too_deep_is_refused(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE)
    deep = tmp_path / ("d" * 100)
    with pytest.raises(LabError, match="too deep"):
        lab.lab_up(spec, deep)
    assert not deep.exists()


def test_peer_status_helpers() -> None:
    assert lab._host_of("[::ffff:10.0.0.1]:3210") == "10.0.0.1"
    assert lab._host_of("10.0.0.2:3210") == "10.0.0.2"
    assert lab._host_of("('::ffff:10.0.0.3', 3210)") == "10.0.0.3"
    assert lab._host_of("[fd00::1]:3210") == "fd00::1"
    peers = lab._peers_from({"peers": {"10.0.0.1:3210": {"node_id": "ab"}, "x": 1}})
    assert peers == [{"addr": "10.0.0.1:3210", "node_id": "ab"}, {"addr": "x"}]
    assert lab._peers_from({"peers": "garbage"}) == []
    assert lab._peer_addr({"addrs": [["::ffff:10.0.0.1", 3210]]}) == "::ffff:10.0.0.1:3210"
    assert lab._norm_id([1, 2, 255]) == "0102ff"
    assert not lab._connected({"state": "connecting"})
    assert lab._connected({"addr": "x"})


# --------------------------------------------------------------------------------------------------
# Namespaces (root)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def lab_root() -> Iterator[Path]:
    """A short private state root (socket paths must stay below 108 bytes; tmp_path can be long)."""
    root = Path("/tmp") / f"vcl-test-{secrets.token_hex(3)}"
    root.mkdir(mode=0o700)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lab_name(lab_root: Path) -> Iterator[str]:
    """A unique lab name; whatever a test leaves behind under it is removed afterwards."""
    name = "t" + secrets.token_hex(4)
    yield name
    netns.cleanup_stale(lab.ns_prefix(name, lab_root))


def _example(name: str) -> LabSpec:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = name
    return LabSpec.model_validate(data)


def _leftovers(name: str, root: Path, pids: list[int]) -> list[str]:
    out = [n for n in netns.list_netns() if n.startswith(lab.ns_prefix(name, root))]
    out += [f"pid {p}" for p in pids if lab._pid_alive(p)]
    if (root / name).exists():
        out.append(str(root / name))
    return out


@pytest.mark.netns
def test_missing_daemon_is_a_clear_error(
    lab_root: Path, lab_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lab, "DAEMON_MODULE", "vpncloud_no_such_daemon")
    with pytest.raises(LabError, match="daemon is not available"):
        lab.lab_up(_example(lab_name), lab_root)
    assert _leftovers(lab_name, lab_root, []) == []


@pytest.mark.netns
def test_down_is_idempotent(lab_root: Path, lab_name: str) -> None:
    assert lab.lab_down(lab_name, lab_root) is False
    # Leftover namespaces of a crashed lab (no state file) are found by prefix and removed.
    netns.create_netns(lab.ns_prefix(lab_name, lab_root) + "a")
    assert lab.lab_down(lab_name, lab_root) is True
    assert lab.lab_down(lab_name, lab_root) is False
    assert _leftovers(lab_name, lab_root, []) == []


@pytest.mark.netns
@needs_daemon
def test_node_exiting_early_shows_log(lab_root: Path, lab_name: str) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = lab_name
    data["nodes"][1]["config"]["no-such-key"] = 1  # the daemon must refuse this config
    with pytest.raises(LabError) as info:
        lab.lab_up(LabSpec.model_validate(data), lab_root, timeout=30)
    msg = str(info.value)
    assert "node b exited early" in msg
    assert "last lines of" in msg
    assert _leftovers(lab_name, lab_root, []) == []


@pytest.mark.netns
@needs_daemon
def test_mesh_not_whole_by_deadline(lab_root: Path, lab_name: str) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = lab_name
    data["nodes"][2]["config"]["crypto"] = {"password": "a-different-password"}  # c can never join
    with pytest.raises(LabError) as info:
        lab.lab_up(LabSpec.model_validate(data), lab_root, timeout=8)
    msg = str(info.value)
    assert "not whole after 8 s" in msg
    assert "c->b" in msg or "b->c" in msg
    assert "a->b" not in msg  # a and b did connect
    assert _leftovers(lab_name, lab_root, []) == []


def _lab_cli(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``vpncloud lab --state-dir ROOT ARGS`` in a separate process, like a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "vpncloud", "lab", "--state-dir", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.netns
@needs_daemon
def test_example_lab_up_status_restart_down(lab_root: Path, lab_name: str, tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = lab_name
    lab_file = tmp_path / "lab.yaml"
    lab_file.write_text(yaml.safe_dump(data))
    pids: list[int] = []
    try:
        res = _lab_cli(lab_root, "up", str(lab_file), "--timeout", "90")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "whole" in res.stdout and "NOT whole" not in res.stdout
        assert res.stdout.count("ok") >= 6 and "FAIL" not in res.stdout  # 3x2 ping matrix

        # The nodes outlived the `up` command: status from this process sees the whole mesh.
        st = lab.lab_status(lab_name, lab_root)
        pids = [n.pid for n in st.nodes if n.pid]
        assert st.whole, st.missing_links()
        assert len(pids) == 3
        # a and c were configured with b only: they found each other through b's peer list.
        for n in st.nodes:
            assert n.running and n.node_id
            assert {p.name for p in n.peers} == {"a", "b", "c"} - {n.name}
            assert n.pid in netns.netns_pids(n.namespace)
        assert st.ping == {s: {d: True for d in "abc" if d != s} for s in "abc"}
        d = lab_root / lab_name
        for node in "abc":
            mode = stat.S_IMODE((d / f"{node}.net").stat().st_mode)
            assert mode == 0o600, f"{node}.net has mode {oct(mode)}"
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert stat.S_IMODE((d / "state.json").stat().st_mode) == 0o600  # the spec holds the keys

        res = _lab_cli(lab_root, "status", str(lab_file))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "FAIL" not in res.stdout

        # Restart one node: the mesh is whole again with a new process.
        st2 = lab.restart_node(lab_name, "a", lab_root, timeout=90)
        new_a = next(n for n in st2.nodes if n.name == "a")
        assert new_a.pid not in pids
        pids.append(new_a.pid or 0)
        assert st2.whole and st2.ping_ok

        res = _lab_cli(lab_root, "down", str(lab_file))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "removed" in res.stdout
    finally:
        lab.lab_down(lab_name, lab_root)
    assert _leftovers(lab_name, lab_root, pids) == []
    assert lab.lab_down(lab_name, lab_root) is False
    assert "nothing to remove" in _lab_cli(lab_root, "down", lab_name).stdout


@pytest.mark.netns
@needs_daemon
def test_reload_node_adds_peer(lab_root: Path, lab_name: str) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = lab_name
    data["nodes"] = data["nodes"][:2]  # a -> b
    spec = LabSpec.model_validate(data)
    try:
        st = lab.lab_up(spec, lab_root, timeout=60)
        assert st.whole
        # Rewrite b's config (a new claim) and SIGHUP it: sessions stay up.
        b = spec.node("b").model_copy(deep=True)
        b.config["claims"] = ["10.123.0.0/24"]
        lab.reload_node(lab_name, b, lab_root)
        written = yaml.safe_load((lab_root / lab_name / "b.net").read_text())
        assert written["claims"] == ["10.123.0.0/24"]
        assert lab.lab_status(lab_name, lab_root).whole
        with pytest.raises(LabError, match="underlay address"):
            lab.reload_node(lab_name, LabNode(name="b", address="10.98.0.200"), lab_root)
        with pytest.raises(LabError, match="no node"):
            lab.reload_node(lab_name, "zz", lab_root)
    finally:
        lab.lab_down(lab_name, lab_root)
    assert _leftovers(lab_name, lab_root, []) == []


@pytest.mark.netns
@needs_daemon
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_up_cleans_up(lab_root: Path, lab_name: str, tmp_path: Path, sig: signal.Signals) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["name"] = lab_name
    data["nodes"][2]["config"]["crypto"] = {"password": "never-joins"}  # keeps `up` waiting
    lab_file = tmp_path / "lab.yaml"
    lab_file.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vpncloud", "lab", "--state-dir", str(lab_root), "up", str(lab_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state_file = lab_root / lab_name / "state.json"
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                nodes = json.loads(state_file.read_text())["nodes"]
                pids = [n["pid"] for n in nodes.values() if n["pid"]]
            except (OSError, ValueError, KeyError):
                pids = []
            if len(pids) == 3:
                break
            time.sleep(0.1)
        assert len(pids) == 3, "lab up never started its nodes"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _leftovers(lab_name, lab_root, pids) == []
