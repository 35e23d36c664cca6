"""ACLs and key expiry in the mesh description (vpncloud/mesh/acl.py) and the daemon's security file."""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct
from pathlib import Path

import pytest
import yaml

from vpncloud.core import base62
from vpncloud.core.errors import ConfigError
from vpncloud.daemon.security_file import load_security_file, parse_security
from vpncloud.mesh.acl import (
    AclSpec,
    check_security,
    compile_policy,
    expiry_warnings,
    parse_test,
    run_policy_tests,
    security_file,
    security_file_text,
)
from vpncloud.mesh.loader import load_mesh_text
from vpncloud.sim.harness import ipv4_packet

MESH = """
mesh: {name: sec, vpn_network: 10.99.0.0/24}
nodes:
  - {name: a, host: h-a, underlay: 10.98.0.1, vpn_address: 10.99.0.1, groups: [admins]}
  - {name: b, host: h-b, underlay: 10.98.0.2, vpn_address: 10.99.0.2, groups: [servers],
     claims: [10.100.2.0/24]}
  - {name: c, host: h-c, underlay: 10.98.0.3, vpn_address: 10.99.0.3, groups: [guests]}
"""


def acl(rules: list[dict[str, object]], tests: list[str] = ()) -> AclSpec:  # type: ignore[assignment]
    return AclSpec.model_validate({"rules": rules, "tests": list(tests)})


RULES = [
    {"from": ["admins"], "to": ["servers"], "proto": "tcp", "ports": [22]},
    {"from": ["*"], "to": ["*"], "proto": "icmp"},
    {"from": ["guests"], "to": ["b"], "proto": "udp", "ports": ["5000-5100"]},
]


@pytest.fixture
def mesh():  # type: ignore[no-untyped-def]
    return load_mesh_text(MESH, "mesh.yaml")


def test_compile_groups_nodes_claims(mesh) -> None:  # type: ignore[no-untyped-def]
    policy = compile_policy(mesh, acl(RULES))
    ssh = policy.rules[0]
    assert ssh.src == (ipaddress.ip_network("10.99.0.1/32"),)
    assert set(ssh.dst) == {ipaddress.ip_network("10.99.0.2/32"), ipaddress.ip_network("10.100.2.0/24")}
    # a packet to the LAN behind b is covered by b's claim
    pkt = ipv4_packet("10.99.0.1", "10.100.2.7", struct.pack("!HH", 5555, 22) + bytes(16), 6)
    assert policy.check(pkt, 0.0, outbound=True)


def test_policy_tests_pass_and_fail(mesh) -> None:  # type: ignore[no-untyped-def]
    spec = acl(
        RULES, ["a -> b:22 allowed", "c -> b:22 denied", "c -> b:5050/udp allowed", "b -> a:22 denied"]
    )
    assert all(r.passed for r in run_policy_tests(mesh, spec))
    assert check_security(mesh, spec) == []
    wrong = acl(RULES, ["c -> b:22 allowed", "a -> b denied"])
    problems = check_security(mesh, wrong)
    assert [p.loc for p in problems] == [("acl", "tests", 0), ("acl", "tests", 1)]
    assert "c -> b (tcp port 22) is denied, but the test expects allowed" in problems[0].message


def test_policy_test_syntax_and_unknown_members(mesh) -> None:  # type: ignore[no-untyped-def]
    for bad in ("a => b allowed", "a -> b:99999 allowed", "a -> b:1/icmp allowed", "a -> b maybe"):
        with pytest.raises(ConfigError):
            parse_test(bad)
    assert parse_test("a → b:53/udp denied").proto == "udp"
    problems = check_security(mesh, acl([{"from": ["nobody"], "to": ["b"]}], ["a -> zz denied"]))
    assert problems[0].loc == ("acl", "rules", 0) and "nobody" in problems[0].message
    problems = check_security(mesh, acl(RULES, ["a -> zz denied"]), {"ghost": dt.date(2030, 1, 1)})
    assert {p.loc for p in problems} == {("acl", "tests", 0), ("key_expiry", "ghost")}


def test_expiry_warnings() -> None:
    now = dt.datetime(2027, 1, 1, 12, tzinfo=dt.UTC)
    exp = {"a": dt.date(2026, 12, 31), "b": dt.date(2027, 1, 20), "c": dt.date(2028, 1, 1)}
    warnings = expiry_warnings(exp, now, warn_days=30)
    assert [k for k, _ in warnings] == ["key-expired", "key-expiring"]
    assert "a" in warnings[0][1] and "in 18 days" in warnings[1][1]


def test_security_file_round_trip_through_the_daemon_loader(mesh, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    keys = {"a": base62.encode(bytes(range(1, 33))), "c": base62.encode(bytes(range(2, 34)))}
    exp = {"c": dt.date(2027, 2, 1)}
    content = security_file(mesh, acl(RULES), exp, keys)
    path = tmp_path / "sec.security.yaml"
    path.write_text(security_file_text(content))
    sec = load_security_file(path)
    assert sec.acl is not None and sec.acl.rules == compile_policy(mesh, acl(RULES)).rules
    assert sec.key_expiry == {bytes(range(2, 34)): dt.datetime(2027, 2, 1, tzinfo=dt.UTC).timestamp()}
    assert "Private" not in path.read_text()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("acl: [", "not valid YAML"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("version: 2\n", "unsupported version"),
        ("surprise: 1\n", "unknown keys surprise"),
        ("acl: {rules: [{src: [x], dst: [10.0.0.1]}]}\n", "Invalid network"),
        ("key_expiry: {notakey!: 5}\n", "invalid public key"),
        ("key_expiry: {" + base62.encode(bytes(range(1, 33))) + ": soon}\n", "Unix time"),
    ],
)
def test_security_file_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "x.security.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_security_file(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_security_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_security_file(tmp_path / "nope.yaml")
    assert load_security_file(tmp_path / "nope.yaml", required=False).acl is None
    assert parse_security(yaml.safe_load("")).acl is None
