"""Input files of the orchestrator and the lab: one error style, file kinds, hints that say why.

Every command prints ``error: FILE:LINE: FIELD: MESSAGE`` lines on stderr; the mesh loader and the lab
loader share the code that makes them (vpncloud/sourcefile.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from test_mesh_models import BASE as MESH

from vpncloud.lab import cli as lab_cli
from vpncloud.lab.lab import LabError, parse_spec
from vpncloud.mesh.cli import build_parser, main
from vpncloud.mesh.loader import MeshError, load_mesh_text
from vpncloud.mesh.models import known_names
from vpncloud.sourcefile import error_lines

ROOT = Path(__file__).resolve().parents[1]
LAB_FILE = ROOT / "inventories" / "lab" / "lab.yaml"
MESH_FILE = ROOT / "inventories" / "lab" / "mesh.yaml"

LAB = """\
name: x
underlay:
  subnet: 10.0.0.0/24
nodes:
  - name: a
"""


def mesh_errors(text: str) -> list[str]:
    with pytest.raises(MeshError) as info:
        load_mesh_text(text, "m.yaml")
    return [str(i) for i in info.value.items]


def lab_errors(text: str) -> list[str]:
    with pytest.raises(LabError) as info:
        parse_spec(text, "l.yaml")
    return str(info.value).splitlines()


def run(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run an orchestrator (plan/apply/rotate/schema) or lab command; its status and stderr lines."""
    if argv[0] == "lab":
        status = lab_cli.main(["--state-dir", str(tmp_path / "lab"), *argv[1:]])
    else:
        state = ["--state-dir", str(tmp_path / "s"), "--keystore", str(tmp_path / "k")]
        status = main([*argv, *(state if argv[0] != "schema" else [])])
    return status, capsys.readouterr().err.splitlines()


# --- one error style for both loaders ------------------------------------------------------------------


def test_both_loaders_write_file_line_and_bracket_path() -> None:
    assert mesh_errors(MESH.replace("    host: hb\n", "    host: [1, 2]\n")) == [
        "m.yaml:10: nodes[1].host: Input should be a valid string"
    ]
    assert lab_errors(LAB.replace("  - name: a\n", "  - name: a\n    address: 10.0.0.300\n")) == [
        "l.yaml:6: nodes[0].address: Input is not a valid IPv4 address"
    ]


@pytest.mark.parametrize(
    ("argv", "content"),
    [
        (["plan", "{f}"], MESH + "    grups: [x]\n"),
        (["apply", "{f}"], MESH + "    grups: [x]\n"),
        (["rotate", "{f}", "a"], MESH + "    grups: [x]\n"),
        (["lab", "up", "{f}"], LAB + "    adress: 10.0.0.9\n"),
        (["lab", "status", "{f}"], LAB + "    adress: 10.0.0.9\n"),
        (["lab", "down", "{f}"], LAB + "    adress: 10.0.0.9\n"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_every_command_prints_the_same_error_lines(
    argv: list[str], content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(content)
    status, err = run([a.format(f=file) for a in argv], tmp_path, capsys)
    assert status != 0
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {file}:"), err
    assert "nodes[" in err[0] and "unknown key" in err[0]


def test_schema_and_usage_errors_use_the_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    status, err = run(["schema", "-o", str(blocker / "mesh.schema.json")], tmp_path, capsys)
    assert status == 1 and len(err) == 1 and err[0].startswith("error: "), err
    for argv in (["plan"], ["lab", "up"]):
        with pytest.raises(SystemExit):
            run(argv, tmp_path, capsys)
        err = capsys.readouterr().err.splitlines()
        assert err[-1].startswith("error: ") and "required" in err[-1], err


def test_an_error_with_details_is_one_error_line_and_its_details() -> None:
    failure = "node a exited early\n--- last lines of a.log ---\nbind: address in use"
    assert error_lines([failure, "m.yaml:3: mesh.port: bad"]) == [
        "error: node a exited early",
        "--- last lines of a.log ---",
        "bind: address in use",
        "error: m.yaml:3: mesh.port: bad",
    ]


# --- the kind of file --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_lab_file_given_to_the_orchestrator_is_named_as_such(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = run([command, str(LAB_FILE)], tmp_path, capsys)
    assert status == 1
    assert err == [
        f"error: {LAB_FILE} is a lab file (original-format node configs), not a mesh description: "
        f"use `vpncloud lab up {LAB_FILE}`"
    ]


def test_a_mesh_file_given_to_lab_up_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = run(["lab", "up", str(MESH_FILE)], tmp_path, capsys)
    assert status == 2
    assert len(err) == 1
    assert err[0].startswith(f"error: {MESH_FILE} is a mesh description, not a lab file")
    assert f"`vpncloud apply {MESH_FILE}`" in err[0]


# --- hints that say why ------------------------------------------------------------------------------


def test_host_bits_in_a_network_say_so() -> None:
    claim = MESH.replace(
        "    vpn_address: 10.1.0.1\n", "    vpn_address: 10.1.0.1\n    claims: [10.100.1.5/24]\n"
    )
    assert mesh_errors(claim) == [
        "m.yaml:9: nodes[0].claims[0]: 10.100.1.5/24 has host bits set; did you mean 10.100.1.0/24?"
    ]
    network = MESH.replace("10.1.0.0/24", "10.1.0.7/24")
    assert mesh_errors(network) == [
        "m.yaml:3: mesh.vpn_network: 10.1.0.7/24 has host bits set; did you mean 10.1.0.0/24?"
    ]
    six = LAB.replace("  subnet: 10.0.0.0/24\n", "  subnet: 10.0.0.0/24\n  subnet6: fd00::1/64\n")
    assert lab_errors(six) == [
        "l.yaml:4: underlay.subnet6: fd00::1/64 has host bits set; did you mean fd00::/64?"
    ]


def test_unknown_keys_name_the_closest_key_at_their_level() -> None:
    assert mesh_errors(MESH.replace("    underlay: 192.0.2.1", "    undrlay: 192.0.2.1")) == [
        "m.yaml:7: nodes[0].undrlay: unknown key 'undrlay'; did you mean 'underlay'?",
    ]
    nested = MESH.replace("  name: t\n", "  name: t\n  timers: {peer_timout: 10}\n")
    assert mesh_errors(nested) == [
        "m.yaml:3: mesh.timers.peer_timout: unknown key 'peer_timout'; did you mean 'peer_timeout'?"
    ]
    assert mesh_errors(MESH + "zzz: 1\n") == [
        "m.yaml:13: zzz: unknown key 'zzz' "
        "(known keys: mesh, nodes, beacons, websocket_proxies, acl, key_expiry)"
    ]
    assert lab_errors(LAB + "comon: {}\n") == ["l.yaml:6: comon: unknown key 'comon'; did you mean 'common'?"]


def test_unknown_key_of_a_secret_does_not_echo_its_value() -> None:
    found = mesh_errors(MESH.replace("  name: t\n", "  name: t\n  pasword: hunter2-secret\n"))
    assert found == ["m.yaml:3: mesh.pasword: unknown key 'pasword'; did you mean 'password'?"]


# --- unknown names list the known ones ---------------------------------------------------------------

ACL = """\
acl:
  rules:
    - {from: [a], to: [RULE_TO]}
  tests:
    - "a -> TEST_DST allowed"
"""


@pytest.mark.parametrize(
    ("rule_to", "test_dst", "extra", "expected"),
    [
        ("zz", "b", "", "m.yaml:15: acl.rules[0]: acl rule 1: unknown group, node or network 'zz' "
         "(nodes: a, b; no groups)"),
        ("b", "zz", "", "m.yaml:17: acl.tests[0]: policy test 'a -> zz allowed': unknown node 'zz' "
         "(nodes: a, b)"),
        ("b", "b", "key_expiry: {zz: 2030-01-01}\n", "m.yaml:18: key_expiry.zz: unknown node 'zz' "
         "(nodes: a, b)"),
        ("192.168.7.5/24", "b", "", "m.yaml:15: acl.rules[0]: acl rule 1: 192.168.7.5/24 has host bits "
         "set; did you mean 192.168.7.0/24?"),
    ],
)  # fmt: skip
def test_unknown_node_names_in_the_description_list_the_nodes(
    rule_to: str, test_dst: str, extra: str, expected: str
) -> None:
    acl = ACL.replace("RULE_TO", rule_to).replace("TEST_DST", test_dst)
    assert mesh_errors(MESH + acl + extra) == [expected]


def test_unknown_proxy_lists_the_proxies() -> None:
    text = MESH.replace("host: hb\n", "host: hb\n    websocket_proxy: px\n")
    text += "websocket_proxies: [{name: p1, host: p1.example}]\n"
    assert mesh_errors(text) == ["m.yaml:11: nodes[1].websocket_proxy: unknown websocket proxy 'px' "
                                 "(websocket_proxies: p1)"]  # fmt: skip


def test_rotate_of_an_unknown_node_lists_the_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "mesh.yaml"
    file.write_text(MESH)
    assert run(["rotate", str(file), "zz"], tmp_path, capsys) == (
        1,
        ["error: unknown node 'zz' (nodes: a, b)"],
    )


def test_long_node_lists_are_cut() -> None:
    assert known_names("nodes", [f"n{i}" for i in range(25)], limit=3) == "nodes: n0, n1, n2, and 22 more"


# --- help --------------------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize(
    ("command", "parser"),
    [
        *(("vpncloud " + n, p) for n, p in _subcommands(build_parser()).items()),
        *(("vpncloud lab " + n, p) for n, p in _subcommands(lab_cli.build_parser()).items()),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_subcommand_help_has_a_description_and_an_example(
    command: str, parser: argparse.ArgumentParser
) -> None:
    text = parser.format_help()
    assert parser.description and parser.description.strip() in text
    examples = [line.strip() for line in (parser.epilog or "").splitlines() if line.startswith("  ")]
    assert examples and all(e.startswith(command + " ") for e in examples), parser.epilog
    assert all(e in text for e in examples)  # kept as written: RawDescriptionHelpFormatter
