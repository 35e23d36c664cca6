"""`vpncloud apply --target ansible`: real ansible-playbook runs of the collection from the orchestrator.

Hosts are reached with ansible_connection=local and deploy under a prefix (vpncloud_root), as in the
collection's own tests; the full deployment is covered there and in molecule. Here: the orchestrator's
wiring (inventory, collections path, keystore and mesh file passed, errors named by step).
"""

from __future__ import annotations

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


def _private_keys(tmp: Path) -> list[str]:
    return [p.read_text().strip() for p in (tmp / "keys").rglob("*.key")]


def test_check_mode_through_apply_records_nothing(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.format(host_a="alpha", host_b="beta"))
    py = sys.executable
    (tmp_path / "hosts.yml").write_text(
        "all:\n  children:\n    vpncloud_nodes:\n      hosts:\n"
        + "".join(
            f"        {h}: {{ansible_connection: local, ansible_python_interpreter: {py}, "
            f"vpncloud_root: {tmp_path / ('root-' + h)}}}\n"
            for h in ("alpha", "beta")
        )
        + "      vars:\n        vpncloud_manage_service: false\n"
    )
    proc = _apply(tmp_path, "--inventory", str(tmp_path / "hosts.yml"), "--ansible-arg=--check")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "check mode, applied state not recorded" in out
    # keys exist on the controller, nothing was deployed, no state was recorded
    assert Keystore(tmp_path / "keys").get("anstest", "a") is not None
    assert not (tmp_path / "root-alpha" / "etc" / "vpncloud" / "anstest.net").exists()
    assert not list((tmp_path / "state").glob("*.state.json"))
    for key in _private_keys(tmp_path):
        assert key not in out


def test_unreachable_host_fails_naming_the_step(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.format(host_a="node-a.invalid", host_b="node-b.invalid"))
    proc = _apply(tmp_path, "--ansible-arg=-e", "--ansible-arg=ansible_ssh_timeout=3")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "step ansible-playbook" in out
    assert "Traceback" not in out
    inventory = (tmp_path / "state" / "anstest" / "inventory.yml").read_text()
    assert "node-a.invalid" in inventory and "vpncloud_nodes" in inventory
    for key in _private_keys(tmp_path):
        assert key not in out
