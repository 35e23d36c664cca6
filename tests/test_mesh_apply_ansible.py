"""`vpncloud apply --target ansible`: real ansible-playbook runs of the collection from the orchestrator.

Hosts are reached with ansible_connection=local and deploy under a prefix (vpncloud_root), as in the
collection's own tests; the full deployment is covered there and in molecule. Here: the orchestrator's
wiring (inventory, collections path, keystore and mesh file passed, errors named by step).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_ansible_support import ansible_missing

from vpncloud.mesh.keystore import Keystore

pytestmark = [
    pytest.mark.skipif(ansible_missing() is not None, reason=str(ansible_missing())),
    pytest.mark.timeout(600),
]

MESH = """\
mesh:
  name: anstest
  vpn_network: 10.79.0.0/24
nodes:
  - {{name: a, host: {host_a}, underlay: 10.78.0.1, vpn_address: 10.79.0.1}}
  - {{name: b, host: {host_b}, underlay: 10.78.0.2, vpn_address: 10.79.0.2}}
"""


def _apply(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vpncloud", "apply", str(tmp / "mesh.yaml"), "--target", "ansible",
           "--state-dir", str(tmp / "state"), "--keystore", str(tmp / "keys"),
           "--no-color", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=500, check=False)


def _local_inventory(tmp: Path, extra_vars: str = "") -> Path:
    """alpha and beta reached with the local connection, each deploying under its own prefix."""
    py = sys.executable
    path = tmp / "hosts.yml"
    path.write_text(
        "all:\n  children:\n    vpncloud_nodes:\n      hosts:\n"
        + "".join(
            f"        {h}: {{ansible_connection: local, ansible_python_interpreter: {py}, "
            f"vpncloud_root: {tmp / ('root-' + h)}}}\n"
            for h in ("alpha", "beta")
        )
        + "      vars:\n        vpncloud_manage_service: false\n"
        + extra_vars
    )
    return path


def _private_keys(tmp: Path) -> list[str]:
    """Checked with ``not any(key in ...)``: a failed ``assert key not in out`` would print the key."""
    return [p.read_text().strip() for p in (tmp / "keys").rglob("*.key")]


def test_check_mode_through_apply_records_nothing(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.format(host_a="alpha", host_b="beta"))
    _local_inventory(tmp_path)
    proc = _apply(tmp_path, "--inventory", str(tmp_path / "hosts.yml"), "--ansible-arg=--check")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "check mode, applied state not recorded" in out
    # keys exist on the controller, nothing was deployed, no state was recorded
    assert Keystore(tmp_path / "keys").get("anstest", "a") is not None
    assert not (tmp_path / "root-alpha" / "etc" / "vpncloud" / "anstest.net").exists()
    assert not list((tmp_path / "state").glob("*.state.json"))
    assert not any(key in out for key in _private_keys(tmp_path))


def test_unreachable_host_fails_naming_the_step(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.format(host_a="node-a.invalid", host_b="node-b.invalid"))
    proc = _apply(tmp_path, "--ansible-arg=-e", "--ansible-arg=ansible_ssh_timeout=3")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "step ansible-playbook" in out
    assert "Traceback" not in out
    inventory = (tmp_path / "state" / "anstest" / "inventory.yml").read_text()
    assert "node-a.invalid" in inventory and "vpncloud_nodes" in inventory
    assert not any(key in out for key in _private_keys(tmp_path))


def _vpncloud(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vpncloud", *args, "--state-dir", str(tmp / "state"),
           "--keystore", str(tmp / "keys"), "--no-color"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=500, check=False)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheelhouse for the module, as a controller keeps its build/wheelhouse: the first apply
    builds and packs it, the later ones find the daemon wheel there (site.yml builds only then)."""
    return tmp_path_factory.mktemp("controller") / "wheelhouse"


def _applied(tmp: Path, wheelhouse: Path) -> tuple[list[str], list[str]]:
    """The two-host mesh applied through Ansible without health checks (no daemons run here), both
    hosts in one batch (the rolling order is not what these tests are about; test_ansible_deploy
    and molecule cover it); returns the target arguments and those rollout arguments for the
    commands that follow."""
    (tmp / "mesh.yaml").write_text(MESH.format(host_a="alpha", host_b="beta"))
    inventory = _local_inventory(tmp, f"        vpncloud_wheelhouse: {wheelhouse}\n")
    target = ["--target", "ansible", "--inventory", str(inventory)]
    rollout = ["--ansible-arg=-e", "--ansible-arg=vpncloud_health_check=false",
                 "--ansible-arg=-e", "--ansible-arg=vpncloud_serial=2"]  # fmt: skip
    proc = _apply(tmp, *target[2:], *rollout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target, rollout


def test_plan_refreshes_through_ansible_and_apply_repairs_an_edited_config(
    tmp_path: Path, wheelhouse: Path
) -> None:
    target, rollout = _applied(tmp_path, wheelhouse)
    config_a = tmp_path / "root-alpha" / "etc" / "vpncloud" / "anstest.net"
    deployed = config_a.read_text()

    # Nothing runs the daemons here (no systemd): the refresh sees that on both hosts.
    mesh = str(tmp_path / "mesh.yaml")
    proc = _vpncloud(tmp_path, "plan", mesh, *target, "--detailed-exitcode")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "# node.a has changed outside vpncloud: daemon not running" in out
    assert "# node.b has changed outside vpncloud: daemon not running" in out
    proc = _vpncloud(tmp_path, "status", mesh, *target, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # not whole: gates a rollout
    status = json.loads(proc.stdout)
    assert status["whole"] is False and status["target"] == "ansible"
    assert {n["name"]: n["up"] for n in status["nodes"]} == {"a": False, "b": False}
    assert status["expected"] == {"a": {"a": False, "b": True}, "b": {"a": True, "b": False}}

    # A config edited on the host is seen as such, and apply writes back what the mesh says.
    config_a.write_text(deployed + "# edited on the host\n")
    proc = _vpncloud(tmp_path, "plan", mesh, *target, "--detailed-exitcode")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "# node.a has changed outside vpncloud: config edited on the host" in out
    proc = _apply(tmp_path, *target[2:], *rollout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert config_a.read_text() == deployed
    proc = _vpncloud(tmp_path, "plan", mesh, *target, "--detailed-exitcode")
    assert "node.a has changed outside vpncloud: daemon not running" in proc.stdout
    assert not any(key in proc.stdout + proc.stderr for key in _private_keys(tmp_path))

    # destroy removes what the roles made on the hosts (state absent) and archives the keys
    proc = _vpncloud(tmp_path, "destroy", mesh, *target, "-auto-approve")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Destroy complete." in proc.stdout
    for host in ("alpha", "beta"):
        assert not (tmp_path / f"root-{host}" / "etc" / "vpncloud" / "anstest.net").exists()
        assert not (tmp_path / f"root-{host}" / "opt" / "vpncloud").exists()
    assert not list((tmp_path / "keys" / "anstest").glob("*.key"))
    assert sorted(p.name for p in (tmp_path / "keys" / "anstest" / "archive").glob("*/*.key")) == [
        "a.key",
        "b.key",
    ]


def test_rotate_apply_through_ansible_rekeys_the_hosts(tmp_path: Path, wheelhouse: Path) -> None:
    target, rollout = _applied(tmp_path, wheelhouse)
    store = Keystore(tmp_path / "keys")
    old = store.get("anstest", "a")
    assert old is not None

    mesh = str(tmp_path / "mesh.yaml")
    proc = _vpncloud(tmp_path, "rotate", mesh, "a", "--apply", *target, *rollout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Rotation complete." in out
    new = store.get("anstest", "a")
    assert new is not None and new.public_key != old.public_key
    assert store.get("anstest", "a", next_key=True) is None
    config = {
        h: (tmp_path / f"root-{h}" / "etc" / "vpncloud" / "anstest.net").read_text()
        for h in ("alpha", "beta")
    }
    # a runs on its new key; b trusts the new key only; nobody holds a's old private key any more
    # (evaluated before the assert: pytest would print both operands of a failed `in`, a private key)
    new_secret, old_secret = new.private_key.get_secret_value(), old.private_key.get_secret_value()
    held = {
        "alpha runs on its new key": new_secret in config["alpha"],
        "alpha's old key is gone from alpha": old_secret not in config["alpha"],
        "alpha's old key is gone from beta": old_secret not in config["beta"],
        "beta does not hold alpha's new key": new_secret not in config["beta"],
    }
    assert all(held.values()), [what for what, ok in held.items() if not ok]
    assert new.public_key in config["beta"] and old.public_key not in config["beta"]
    state = json.loads(next((tmp_path / "state").glob("*.state.json")).read_text())
    assert state.get("rotation") is None
    leaked = [key in out for key in (old_secret, new_secret)]
    assert leaked == [False, False]
    # the files on the hosts are what the mesh says: only the daemons (not run here) differ
    proc = _vpncloud(tmp_path, "plan", mesh, *target, "--detailed-exitcode")
    assert "config edited on the host" not in proc.stdout, proc.stdout
    assert "will be updated" not in proc.stdout, proc.stdout
