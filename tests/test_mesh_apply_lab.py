"""``vpncloud apply --target lab`` of the example mesh in real network namespaces, then a change."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpncloud.mesh.cli import main
from vpncloud.mesh.keystore import Keystore

EXAMPLE = Path(__file__).resolve().parents[1] / "inventories" / "lab" / "mesh.yaml"


@pytest.fixture
def lab_mesh(tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    from vpncloud.lab import lab

    # A name of our own: other lab tests may run at the same time.
    name = f"mt{os.getpid() % 100000}"
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(EXAMPLE.read_text().replace("  name: lab\n", f"  name: {name}\n"))
    lab_dir = tmp_path / "lab"
    try:
        yield mesh_file, name, lab_dir
    finally:
        lab.lab_down(name, lab_dir)


@pytest.mark.netns
@pytest.mark.timeout(240)
def test_apply_lab_then_change_then_no_changes(
    lab_mesh: tuple[Path, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vpncloud.lab import lab

    mesh_file, name, lab_dir = lab_mesh
    # guard limits for every node, one of them changed on a alone below (issue 24)
    mesh_file.write_text(
        mesh_file.read_text().replace(
            "    port_forwarding: false\n",
            "    port_forwarding: false\n"
            "    handshake_guard: {max_pending_per_host: 3, global_rate: 150.5}\n",
        )
    )
    common = ["--state-dir", str(tmp_path / "state"), "--keystore", str(tmp_path / "keys"), "--no-color"]
    target = ["--target", "lab", "--lab-dir", str(lab_dir), "--timeout", "60"]

    assert main(["apply", str(mesh_file), *common, *target]) == 0
    assert "Apply complete." in capsys.readouterr().out
    status = lab.lab_status(name, lab_dir)
    assert status.whole and status.ping_ok
    assert sorted(n.name for n in status.nodes) == ["a", "b", "c"]
    # the managed hosts block names every node inside the lab's namespaces
    ns_a = next(n.namespace for n in status.nodes if n.name == "a")
    resolved = subprocess.run(
        ["ip", "netns", "exec", ns_a, "getent", "hosts", f"b.{name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert resolved.stdout.split()[:1] == ["10.99.0.2"], resolved
    keys = Keystore(tmp_path / "keys").public_keys(name)
    assert sorted(keys) == ["a", "b", "c"]
    for node in ("a", "b", "c"):
        limits = lab.node_status(name, node, lab_dir)[1]["security"]["handshake_guard_limits"]
        assert (limits["max_pending_per_host"], limits["global_rate"], limits["max_pending"]) == (
            3,
            150.5,
            256,
        )

    # A reload (new claim on b) and a restart (c moves to another port).
    text = mesh_file.read_text()
    text = text.replace(
        "    vpn_address: 10.99.0.2\n", "    vpn_address: 10.99.0.2\n    claims: [10.100.2.0/24]\n"
    )
    text = text.replace("    underlay: 10.98.0.3\n", "    underlay: 10.98.0.3\n    overrides: {port: 3300}\n")
    # a guard limit of a alone: the daemon reads the guard at start, so a restarts
    text = text.replace(
        "    underlay: 10.98.0.1\n",
        "    underlay: 10.98.0.1\n    overrides: {handshake_guard: {max_pending_per_host: 5}}\n",
    )
    mesh_file.write_text(text)
    assert main(["plan", str(mesh_file), *common, "--detailed-exitcode"]) == 2
    out = capsys.readouterr().out
    assert (
        "# node.c must be replaced (restart)" in out
        and "# node.b will be updated in place (reload)" in out
        and "# node.a must be replaced (restart)" in out
    )
    assert main(["apply", str(mesh_file), *common, *target]) == 0
    out = capsys.readouterr().out
    assert "node b: reload" in out and "node c: restart" in out and "node a: restart" in out
    status = lab.lab_status(name, lab_dir)
    assert status.whole and status.ping_ok
    limits = lab.node_status(name, "a", lab_dir)[1]["security"]["handshake_guard_limits"]
    assert (limits["max_pending_per_host"], limits["global_rate"]) == (5, 150.5)  # merged key by key
    limits = lab.node_status(name, "b", lab_dir)[1]["security"]["handshake_guard_limits"]
    assert limits["max_pending_per_host"] == 3
    assert Keystore(tmp_path / "keys").public_keys(name) == keys  # no key regenerated

    assert main(["plan", str(mesh_file), *common, "--detailed-exitcode"]) == 0
    assert "No changes." in capsys.readouterr().out

    # Phased key rotation of a: the mesh stays healthy and converges to the new key.
    assert main(["rotate", str(mesh_file), "a", *common, *target, "--apply"]) == 0
    out = capsys.readouterr().out
    assert "Phase 1: trust the new key of a everywhere (reload)" in out and "Rotation complete." in out
    new_keys = Keystore(tmp_path / "keys").public_keys(name)
    assert new_keys["a"] != keys["a"] and new_keys["b"] == keys["b"]
    # The old key is archived (dated), not left beside the current one nor deleted.
    assert not (tmp_path / "keys" / name / "a.retired.key").exists()
    assert [p.name for p in (tmp_path / "keys" / name).glob("archive/*/*")] == ["a.retired.key"]
    assert "node a: old key archived to" in out
    status = lab.lab_status(name, lab_dir)
    assert status.whole and status.ping_ok
    assert main(["plan", str(mesh_file), *common, "--detailed-exitcode"]) == 0
