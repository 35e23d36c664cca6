"""ACLs, policy tests and key expiry as part of mesh.yaml, seen through `vpncloud plan`."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from vpncloud.mesh.cli import main

MESH = """\
mesh:
  name: acltest
  vpn_network: 10.77.0.0/24
nodes:
  - {{name: a, host: h1, underlay: 10.76.0.1, vpn_address: 10.77.0.1, groups: [admins]}}
  - {{name: b, host: h2, underlay: 10.76.0.2, vpn_address: 10.77.0.2, groups: [servers]}}
  - {{name: c, host: h3, underlay: 10.76.0.3, vpn_address: 10.77.0.3}}
acl:
  rules:
    - {{from: [admins], to: [servers], proto: tcp, ports: [22]}}
  tests:
    - "a -> b:22 allowed"
    - "c -> b:22 {expect}"
key_expiry:
  c: {expiry}
"""


def _plan(tmp_path: Path, capsys: object, *, expect: str, expiry: dt.date) -> tuple[int, str, str]:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(MESH.format(expect=expect, expiry=expiry.isoformat()))
    args = ["plan", str(mesh), "--state-dir", str(tmp_path / "state"), "--keystore", str(tmp_path / "keys")]
    rc = main([*args, "--json"])
    out, err = capsys.readouterr()  # type: ignore[attr-defined]
    return rc, out, err


def test_plan_shows_the_security_resource_and_warns_of_expiry(tmp_path: Path, capsys: object) -> None:
    soon = dt.date.today() + dt.timedelta(days=10)
    rc, out, _err = _plan(tmp_path, capsys, expect="denied", expiry=soon)
    assert rc == 0
    plan = json.loads(out)
    addresses = [c["address"] for c in plan["changes"]]
    assert "security.acltest" in addresses
    assert any(w["kind"] == "key-expiring" and "c" in w["message"] for w in plan["warnings"])


def test_failing_policy_test_is_a_located_plan_error(tmp_path: Path, capsys: object) -> None:
    later = dt.date.today() + dt.timedelta(days=400)
    rc, out, err = _plan(tmp_path, capsys, expect="allowed", expiry=later)
    assert rc == 1
    assert "mesh.yaml:13: acl.tests[1]: policy test failed" in err + out
    assert "Traceback" not in err + out


def test_plan_warns_when_the_vpn_mtu_is_above_the_path(tmp_path: Path, capsys: object) -> None:
    mesh = tmp_path / "mesh.yaml"
    base = (
        "mesh:\n  name: mtu\n  vpn_network: 10.77.0.0/24\nEXTRA"
        + "nodes:\n"
        + "".join(
            f"  - {{name: n{i}, host: h{i}, underlay: 10.76.0.{i}, vpn_address: 10.77.0.{i}}}\n"
            for i in (1, 2)
        )
    )
    args = [
        "plan",
        str(mesh),
        "--state-dir",
        str(tmp_path / "s"),
        "--keystore",
        str(tmp_path / "k"),
        "--json",
    ]
    mesh.write_text(base.replace("EXTRA", "  path_mtu: 1420\n"))
    assert main(args) == 0
    warnings = json.loads(capsys.readouterr()[0])["warnings"]  # type: ignore[attr-defined]
    assert [w for w in warnings if w["kind"] == "mtu" and "1427" in w["message"] and "1347" in w["message"]]
    mesh.write_text(base.replace("EXTRA", "  path_mtu: 1500\n"))
    assert main(args) == 0
    warnings = json.loads(capsys.readouterr()[0])["warnings"]  # type: ignore[attr-defined]
    assert not [w for w in warnings if w["kind"] == "mtu"]
