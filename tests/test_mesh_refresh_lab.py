"""Refresh before plan on the lab target: drift made outside vpncloud is planned and repaired.

Real namespaces and daemons: the drift is made the way a user makes it (``lab down``, ``kill``,
editing a config file) and ``plan``/``apply`` must see and repair exactly that.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpncloud.daemon.control import netns_socket_link
from vpncloud.lab import lab
from vpncloud.lab.cli import main as lab_main
from vpncloud.mesh.cli import main
from vpncloud.mesh.keystore import Keystore

EXAMPLE = Path(__file__).resolve().parents[1] / "inventories" / "lab" / "mesh.yaml"


@dataclass
class LabMesh:
    mesh_file: Path
    name: str
    lab_dir: Path
    common: list[str]
    target: list[str]

    def pids(self) -> dict[str, int | None]:
        return {n.name: n.pid for n in lab.lab_status(self.name, self.lab_dir, ping=False).nodes}


@pytest.fixture
def lab_mesh(tmp_path: Path) -> Iterator[LabMesh]:
    # Unique per test: other lab tests may run at the same time on this machine.
    name = "mr" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:10]
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(EXAMPLE.read_text().replace("  name: lab\n", f"  name: {name}\n"))
    lab_dir = tmp_path / "lab"
    common = ["--state-dir", str(tmp_path / "state"), "--keystore", str(tmp_path / "keys"), "--no-color"]
    target = ["--lab-dir", str(lab_dir), "--timeout", "60"]
    try:
        yield LabMesh(mesh_file, name, lab_dir, common, target)
    finally:
        lab.lab_down(name, lab_dir)


@pytest.fixture
def applied(lab_mesh: LabMesh, capsys: pytest.CaptureFixture[str]) -> LabMesh:
    """The example mesh applied to a fresh lab of its own."""
    assert _apply(lab_mesh) == 0
    capsys.readouterr()
    return lab_mesh


def _kill_and_wait(pid: int) -> None:
    # What the user did: plain kill (SIGTERM); a pidfd tells when the process is gone.
    fd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGTERM)
        assert select.select([fd], [], [], 10)[0], f"pid {pid} did not exit"
    finally:
        os.close(fd)


def _plan(m: LabMesh, *extra: str) -> int:
    return main(["plan", str(m.mesh_file), *m.common, *m.target, "--detailed-exitcode", *extra])


def _apply(m: LabMesh) -> int:
    return main(["apply", str(m.mesh_file), *m.common, *m.target])


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_refresh_plans_and_repairs_drift(lab_mesh: LabMesh, capsys: pytest.CaptureFixture[str]) -> None:
    m = lab_mesh
    assert _apply(m) == 0
    capsys.readouterr()
    assert _plan(m) == 0
    assert "No changes." in capsys.readouterr().out

    # 1. lab down, then apply: the lab comes back (it used to say "No changes").
    assert lab.lab_down(m.name, m.lab_dir)
    assert _plan(m) == 2
    out = capsys.readouterr().out
    assert f"# lab.{m.name} has changed outside vpncloud: lab not running" in out
    assert f"# lab.{m.name} will be created: lab not running" in out
    assert out.index("Objects have changed outside of vpncloud") < out.index("will perform")
    assert _apply(m) == 0
    assert "Apply complete." in capsys.readouterr().out
    status = lab.lab_status(m.name, m.lab_dir)
    assert status.whole and status.ping_ok

    # 2. kill b's daemon: plan shows it, apply restarts b and only b.
    before = m.pids()
    b_pid = before["b"]
    assert b_pid is not None
    _kill_and_wait(b_pid)
    assert _plan(m) == 2
    out = capsys.readouterr().out
    assert "# node.b has changed outside vpncloud: daemon not running" in out
    assert "# node.b must be replaced (restart): daemon not running" in out
    assert "Plan: 0 to add, 0 to change, 1 to replace, 0 to destroy." in out
    # Offline plans skip the refresh and say so.
    assert _plan(m, "-refresh=false") == 0
    out = capsys.readouterr().out
    assert "Refresh skipped" in out and "No changes." in out
    # The JSON plan carries the drift section.
    assert main(["plan", str(m.mesh_file), *m.common, *m.target, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["drift"] == [{"address": "node.b", "reason": "daemon not running", "action": "replace"}]
    # A saved plan carries the drift and applies exactly that repair.
    saved = m.mesh_file.parent / "repair.json"
    assert main(["plan", str(m.mesh_file), *m.common, *m.target, "-out", str(saved)]) == 0
    capsys.readouterr()
    assert json.loads(saved.read_text())["drift"] == data["drift"]
    assert main(["apply", str(saved), *m.common, *m.target]) == 0
    assert "node b: restart" in capsys.readouterr().out
    after = m.pids()
    assert after["a"] == before["a"] and after["c"] == before["c"] and after["b"] != b_pid
    assert lab.lab_status(m.name, m.lab_dir).whole

    # 3. a config edited on disk is drift too, repaired by restarting with the rendered config.
    config = Path(lab.lab_status(m.name, m.lab_dir).state_dir) / "c.net"
    config.write_text(config.read_text().replace("peer-timeout: 300", "peer-timeout: 301"))
    assert _plan(m) == 2
    assert "# node.c has changed outside vpncloud: config edited outside vpncloud" in capsys.readouterr().out
    assert _apply(m) == 0
    capsys.readouterr()
    assert "peer-timeout: 300" in config.read_text()
    assert _plan(m) == 0
    capsys.readouterr()

    # 4. a hosts file edited inside a namespace: rewritten, no daemon touched.
    pids = m.pids()
    ns_a = next(n.namespace for n in lab.lab_status(m.name, m.lab_dir, ping=False).nodes if n.name == "a")
    hosts = Path("/etc/netns", ns_a, "hosts")
    original = hosts.read_text()
    hosts.write_text("127.0.0.1 localhost\n")
    assert _plan(m) == 2
    out = capsys.readouterr().out
    assert f"# hosts.{m.name} has changed outside vpncloud: hosts file of a edited outside vpncloud" in out
    assert f"# hosts.{m.name} will be updated in place: hosts file of a edited" in out
    assert _apply(m) == 0
    capsys.readouterr()
    assert hosts.read_text() == original and m.pids() == pids
    assert _plan(m) == 0
    capsys.readouterr()


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_refresh_sees_a_node_running_with_another_key(
    applied: LabMesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = applied
    # The keystore's key of a is replaced behind vpncloud's back: a now runs with a foreign key.
    key = tmp_path / "keys" / m.name / "a.key"
    replacement = tmp_path / "keys" / m.name / "b.key"
    os.replace(key, tmp_path / "a.key.old")
    key.write_text(replacement.read_text())
    os.chmod(key, 0o600)
    assert _plan(m) == 2
    out = capsys.readouterr().out
    assert "# node.a has changed outside vpncloud: uses a key that is not its key in the keystore" in out


NODE_D = """  - name: d
    host: lab-d
    underlay: 10.98.0.4
    vpn_address: 10.99.0.4
"""


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_adding_and_removing_a_node_reloads_the_others(
    applied: LabMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    m = applied
    before = m.pids()

    m.mesh_file.write_text(m.mesh_file.read_text() + NODE_D)
    assert _plan(m) == 2
    out = capsys.readouterr().out
    assert "# node.d will be created" in out
    for other in "abc":
        assert f"# node.{other} will be updated in place (reload)" in out
    assert _apply(m) == 0
    out = capsys.readouterr().out
    assert "rebuilding" not in out and "node d: add" in out and "node a: reload" in out
    status = lab.lab_status(m.name, m.lab_dir)
    assert {n.name: n.pid for n in status.nodes if n.name != "d"} == before
    assert status.whole and status.ping_ok  # a, b and c are connected to d (and d to them)
    ns_a = next(n.namespace for n in status.nodes if n.name == "a")
    hosts = Path("/etc/netns", ns_a, "hosts").read_text()
    assert f"d.{m.name}" in hosts  # the others' hosts files name the new node
    assert _plan(m) == 0
    capsys.readouterr()

    # An apply interrupted after adding d to the lab but before recording it: the next apply converges.
    state_file = Path(m.common[1]) / f"{m.name}.state.json"
    recorded = json.loads(state_file.read_text())
    del recorded["resources"]["node.d"]
    state_file.write_text(json.dumps(recorded))
    assert _plan(m) == 2
    assert "# node.d will be created" in capsys.readouterr().out
    assert _apply(m) == 0
    assert lab.lab_status(m.name, m.lab_dir).whole
    assert _plan(m) == 0
    capsys.readouterr()

    m.mesh_file.write_text(m.mesh_file.read_text().replace(NODE_D, ""))
    assert _apply(m) == 0
    assert "node d: remove" in capsys.readouterr().out
    status = lab.lab_status(m.name, m.lab_dir)
    assert [n.name for n in status.nodes] == ["a", "b", "c"]
    assert {n.name: n.pid for n in status.nodes} == before
    assert status.whole and status.ping_ok
    assert _plan(m) == 0


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_replace_restarts_one_node_and_destroy_removes_everything(
    applied: LabMesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = applied
    before = m.pids()
    assert main(["apply", str(m.mesh_file), *m.common, *m.target, "-replace", "b"]) == 0
    assert "node b: restart" in capsys.readouterr().out
    after = m.pids()
    assert after["b"] != before["b"] and (after["a"], after["c"]) == (before["a"], before["c"])
    assert lab.lab_status(m.name, m.lab_dir).whole

    assert main(["destroy", str(m.mesh_file), *m.common, *m.target, "-auto-approve"]) == 0
    out = capsys.readouterr().out
    assert f"# lab.{m.name} will be destroyed" in out and "Destroy complete." in out
    assert not lab.read_lab(m.name, m.lab_dir).up
    assert not any(m.name in ns for ns in lab.netns.list_netns())
    keys = tmp_path / "keys" / m.name
    assert not list(keys.glob("*.key"))
    assert sorted(p.name for p in keys.glob("archive/*/*.key")) == ["a.key", "b.key", "c.key"]
    assert not (tmp_path / "state" / m.name).exists()  # rendered configs removed
    # The next plan starts from nothing (the keys are archived, so new ones will be made).
    assert _plan(m) == 2
    assert "Plan: 4 to add" in capsys.readouterr().out


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_status_finds_the_lab_node_of_its_namespace(
    applied: LabMesh, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    m = applied
    status = lab.lab_status(m.name, m.lab_dir, ping=False)
    b = next(n for n in status.nodes if n.name == "b")
    # Plain "vpncloud status" inside b's namespace: no --socket, no -d.
    root = str(Path(__file__).resolve().parents[1])
    res = subprocess.run(
        ["ip", "netns", "exec", b.namespace, sys.executable, "-m", "vpncloud", "status", "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=root),
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    keys = Keystore(tmp_path / "keys").public_keys(m.name)
    assert data["pid"] == b.pid and data["public_key"] == keys["b"]

    assert lab_main(["--state-dir", str(m.lab_dir), "status", m.name, "--no-ping"]) == 0
    out = capsys.readouterr().out
    assert f"control socket of b: {b.socket}" in out
    assert lab_main(["--state-dir", str(m.lab_dir), "status", m.name, "b"]) == 0
    out = capsys.readouterr().out
    assert f"control socket: {b.socket}" in out and f"namespace {b.namespace}" in out
    assert "Peers" in out and "10.98.0.1:3210" in out  # the daemon's own status: its peers

    # Down, the registration is gone too.
    lab.lab_down(m.name, m.lab_dir)
    assert not os.path.lexists(netns_socket_link(b.namespace))


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_a_node_outside_the_underlay_network_plans_a_rebuild(
    applied: LabMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    m = applied
    before = m.pids()
    m.mesh_file.write_text(m.mesh_file.read_text() + NODE_D.replace("10.98.0.4", "10.98.1.4"))
    assert _plan(m) == 2
    out = capsys.readouterr().out
    reason = "the underlay network changes from 10.98.0.0/24 to 10.98.0.0/23"
    assert f"# lab.{m.name} must be replaced: {reason}" in out
    assert "Objects have changed outside" not in out  # a consequence of the mesh file, not drift
    assert _apply(m) == 0
    assert "rebuilding the lab" in capsys.readouterr().out
    status = lab.lab_status(m.name, m.lab_dir)
    assert [n.name for n in status.nodes] == ["a", "b", "c", "d"] and status.whole
    assert all(status_pid != before[n] for n, status_pid in m.pids().items() if n != "d")
    assert _plan(m) == 0


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_mesh_status_reports_health_and_the_connection_matrix(
    applied: LabMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    from vpncloud.cli import main as vpncloud_main

    m = applied
    cmd = ["status", str(m.mesh_file), *m.common, "--lab-dir", str(m.lab_dir)]
    assert vpncloud_main([*cmd, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["whole"] and data["problems"] == []
    assert [n["name"] for n in data["nodes"]] == ["a", "b", "c"]
    for node in data["nodes"]:
        assert node["up"] and node["public_key_matches"] is True and node["peers"] == 2
        assert node["version"] and node["dataplane"] and node["last_handshake_secs"] is not None
    assert data["connected"] == data["expected"]
    assert vpncloud_main(cmd) == 0
    assert "whole" in capsys.readouterr().out

    c_pid = m.pids()["c"]
    assert c_pid is not None
    _kill_and_wait(c_pid)
    assert vpncloud_main([*cmd, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert not data["whole"] and "c: not running" in data["problems"]
    assert "c -> a: not connected" in data["problems"]


@pytest.mark.netns
@pytest.mark.timeout(300)
def test_a_deleted_namespace_rebuilds_the_lab_without_leaking_the_daemon(
    applied: LabMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    m = applied
    status = lab.lab_status(m.name, m.lab_dir, ping=False)
    b = next(n for n in status.nodes if n.name == "b")
    assert b.pid is not None
    # Deleting a namespace's name leaves its daemon running in the now anonymous namespace.
    subprocess.run(["ip", "netns", "delete", b.namespace], check=True)
    assert _plan(m) == 2
    out = capsys.readouterr().out
    assert f"# lab.{m.name} has changed outside vpncloud: namespace of b missing" in out
    assert f"# lab.{m.name} must be replaced: namespace of b missing" in out
    fd = os.pidfd_open(b.pid)
    try:
        assert _apply(m) == 0
        capsys.readouterr()
        assert select.select([fd], [], [], 10)[0], "the old daemon of b still runs"
    finally:
        os.close(fd)
    status = lab.lab_status(m.name, m.lab_dir)
    assert status.whole and status.ping_ok
    assert _plan(m) == 0
