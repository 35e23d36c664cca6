"""The mesh description: loader errors (file, line, field), cross-field checks, schema, property test."""

from __future__ import annotations

import ast
import hashlib
import ipaddress
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from vpncloud.config import Config, load_config_text
from vpncloud.core import base62
from vpncloud.core.identity import Identity
from vpncloud.core.primitives import ed25519_public_key
from vpncloud.mesh.cli import SCHEMA_PATH, mesh_schema
from vpncloud.mesh.loader import MeshError, load_mesh, load_mesh_text, load_meshes
from vpncloud.mesh.models import MeshFile, check_mesh
from vpncloud.mesh.render import KeyView, config_text, hosts_block, render_mesh, replace_hosts_block

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [ROOT / "inventories" / "lab" / "mesh.yaml", ROOT / "inventories" / "fleet" / "mesh.yaml"]

BASE = """\
mesh:
  name: t
  vpn_network: 10.1.0.0/24
nodes:
  - name: a
    host: ha
    underlay: 192.0.2.1
    vpn_address: 10.1.0.1
  - name: b
    host: hb
    underlay: 192.0.2.2
    vpn_address: 10.1.0.2
"""


def errors_of(text: str, file: str = "m.yaml") -> list[tuple[int | None, str, str]]:
    with pytest.raises(MeshError) as info:
        load_mesh_text(text, file)
    for item in info.value.items:
        assert item.file == file
    return [(i.line, i.field, i.message) for i in info.value.items]


def test_base_mesh_loads() -> None:
    mesh = load_mesh_text(BASE)
    assert [n.name for n in mesh.nodes] == ["a", "b"]
    assert check_mesh(mesh) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_meshes_load_and_validate_against_schema(path: Path) -> None:
    mesh = load_mesh(path)
    assert mesh.nodes
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_schema_file_is_not_stale() -> None:
    assert SCHEMA_PATH.read_text() == mesh_schema(), (
        "run: vpncloud schema  (schemas/mesh.schema.json is stale)"
    )


def test_schema_has_descriptions_everywhere() -> None:
    schema = json.loads(mesh_schema())
    for name, definition in schema["$defs"].items():
        for prop, spec in definition.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{prop} has no description"
        assert definition.get("additionalProperties") is False, name


def test_schema_rejects_typo_like_the_loader() -> None:
    data = yaml.safe_load(BASE)
    data["nodes"][0]["vpn_adress"] = "10.1.0.9"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json.loads(mesh_schema()))


def test_broken_yaml_names_file_and_line() -> None:
    text = BASE.replace("    host: hb\n", "    host: [hb\n")
    [(line, _field, message)] = errors_of(text)
    assert line is not None and line >= 11
    assert "invalid YAML" in message


def test_unknown_key_names_line_and_field() -> None:
    text = BASE.replace("    host: hb\n", "    host: hb\n    vpn_adress: 10.1.0.9\n")
    assert errors_of(text) == [
        (11, "nodes[1].vpn_adress", "unknown key 'vpn_adress'; did you mean 'vpn_address'?")
    ]


def test_bad_value_names_line_and_field() -> None:
    text = BASE.replace("vpn_address: 10.1.0.2", "vpn_address: 10.1.0.300")
    [(line, field, message)] = errors_of(text)
    assert (line, field) == (12, "nodes[1].vpn_address")
    assert "IPv4" in message


def test_missing_field_points_at_its_parent() -> None:
    text = BASE.replace("    vpn_address: 10.1.0.2\n", "")
    [(line, field, message)] = errors_of(text)
    assert (line, field) == (9, "nodes[1].vpn_address")
    assert "required" in message.lower()


def test_duplicate_yaml_key_is_an_error() -> None:
    text = BASE.replace("    host: hb\n", "    host: hb\n    host: hc\n")
    assert errors_of(text) == [(11, "nodes[1].host", "duplicate key 'host'")]


def test_empty_and_non_mapping_documents() -> None:
    assert "empty" in errors_of("")[0][2]
    assert "mapping" in errors_of("- a\n- b\n")[0][2]


@pytest.mark.parametrize(
    ("old", "new", "field", "needle"),
    [
        ("name: b", "name: a", "nodes[1].name", "duplicate node name"),
        ("vpn_address: 10.1.0.2", "vpn_address: 10.1.0.1", "nodes[1].vpn_address", "duplicate vpn_address"),
        ("vpn_address: 10.1.0.2", "vpn_address: 10.2.0.2", "nodes[1].vpn_address", "outside vpn_network"),
        ("underlay: 192.0.2.2", "underlay: 192.0.2.1", "nodes[1].underlay", "duplicate underlay"),
        ("host: hb", "host: ha", "nodes[1].host", "port 3210 is used twice on host 'ha'"),
        # addresses, host names and ports, wherever the description holds them
        ("underlay: 192.0.2.2", "underlay: 10.98.0.300", "nodes[1].underlay", "not a valid IPv4 address"),
        ("underlay: 192.0.2.2", "underlay: 192.0.2", "nodes[1].underlay", "not a valid IPv4 address"),
        ("underlay: 192.0.2.2", "underlay: '2001:db8::g'", "nodes[1].underlay", "not a valid IPv6 address"),
        ("underlay: 192.0.2.2", "underlay: 'b .example'", "nodes[1].underlay", "nor a host name"),
        ("underlay: 192.0.2.2", "underlay: b..example", "nodes[1].underlay", "nor a host name"),
        ("host: hb", "host: 192.0.2.256", "nodes[1].host", "not a valid IPv4 address"),
        ("host: hb", "host: 'h b'", "nodes[1].host", "nor a host name"),
        ("vpn_address: 10.1.0.2", "vpn_address: 10.1.0.2\n    advertise: [198.51.100.999]",
         "nodes[1].advertise", "not a valid IPv4 address"),
        ("vpn_address: 10.1.0.2", "vpn_address: 10.1.0.2\n    advertise: ['198.51.100.9:70000']",
         "nodes[1].advertise", "port '70000'"),
        ("vpn_address: 10.1.0.2", "vpn_address: 10.1.0.2\n    advertise: ['[2001:db8::1]:0']",
         "nodes[1].advertise", "port '0'"),
        ("vpn_address: 10.1.0.2", "vpn_address: 10.1.0.2\n    overrides: {port: 65536}",
         "nodes[1].overrides.port", "less than or equal to 65535"),
        ("vpn_address: 10.1.0.2", "vpn_address: 10.1.0.2\n    overrides: {statsd_server: 'st:8125x'}",
         "nodes[1].overrides.statsd_server", "port '8125x'"),
        ("vpn_address: 10.1.0.2", "vpn_address: 10.1.0.2\n    overrides: {statsd_server: statsd.local}",
         "nodes[1].overrides.statsd_server", "has no port"),
        ("  vpn_network", "  port: 0\n  vpn_network", "mesh.port", "greater than or equal to 1"),
        ("  vpn_network", "  defaults: {statsd_server: '1.2.3.4.5:1'}\n  vpn_network",
         "mesh.defaults.statsd_server", "not a valid IPv4 address"),
        ("nodes:", "websocket_proxies: [{name: p, host: 'p..x'}]\nnodes:",
         "websocket_proxies[0].host", "nor a host name"),
        ("nodes:", "websocket_proxies: [{name: p, host: p.example, port: 99999}]\nnodes:",
         "websocket_proxies[0].port", "less than or equal to 65535"),
    ],
)  # fmt: skip
def test_field_and_cross_field_checks(old: str, new: str, field: str, needle: str) -> None:
    found = errors_of(BASE.replace(old, new))
    assert any(f == field and needle in m for _, f, m in found), found
    for line, _, _ in found:
        assert line is not None


@pytest.mark.parametrize(
    "value",
    ["192.0.2.7", "2001:db8::7", "b.example.net", "b.example.net.", "node_b", "xn--bcher-kva.example"],
)
def test_valid_underlays_pass(value: str) -> None:
    mesh = load_mesh_text(BASE.replace("underlay: 192.0.2.2", f"underlay: '{value}'"))
    assert mesh.nodes[1].underlay == value
    advertised = BASE.replace(
        "vpn_address: 10.1.0.2",
        "vpn_address: 10.1.0.2\n    advertise: ['[2001:db8::9]:3210', '198.51.100.1:1', c.example]",
    )
    assert len(load_mesh_text(advertised).nodes[1].advertise) == 3


def test_same_claim_on_two_nodes_is_an_error() -> None:
    text = BASE.replace("vpn_address: 10.1.0.1\n", "vpn_address: 10.1.0.1\n    claims: [10.9.0.0/24]\n")
    text = text.replace("vpn_address: 10.1.0.2\n", "vpn_address: 10.1.0.2\n    claims: [10.9.0.0/24]\n")
    found = errors_of(text)
    assert found == [(14, "nodes[1].claims[0]", "claim 10.9.0.0/24 is also claimed by 'a'")]


def test_node_without_reachable_peer() -> None:
    text = BASE.replace("    underlay: 192.0.2.1\n", "    behind_nat: true\n").replace(
        "    underlay: 192.0.2.2\n", "    behind_nat: true\n"
    )
    found = errors_of(text)
    assert {(f, m) for _, f, m in found} == {
        ("nodes[0].behind_nat", "node 'a' has no reachable peer"),
        ("nodes[1].behind_nat", "node 'b' has no reachable peer"),
    }


def test_public_node_needs_underlay() -> None:
    [(line, field, message)] = errors_of(BASE.replace("    underlay: 192.0.2.2\n", ""))
    assert field == "nodes[1]" and "underlay" in message and line == 9


def test_password_mode_rules_and_secret_never_echoed() -> None:
    text = BASE.replace("  vpn_network", "  auth: keys\n  password: hunter2-secret\n  vpn_network")
    found = errors_of(text)
    assert any("only allowed with auth: password" in m for _, _, m in found)
    assert "hunter2-secret" not in repr(found)
    mesh = load_mesh_text(
        BASE.replace("  vpn_network", "  auth: password\n  password: hunter2\n  vpn_network")
    )
    assert "hunter2" not in repr(mesh) and "hunter2" not in mesh.model_dump_json()
    assert errors_of(BASE.replace("  vpn_network", "  auth: password\n  vpn_network"))


def test_wrong_type_for_secret_does_not_echo_it() -> None:
    text = BASE.replace("  vpn_network", "  auth: password\n  password: [s3cr3t-value]\n  vpn_network")
    found = errors_of(text)
    assert found and "s3cr3t-value" not in repr(found)


def test_several_meshes_on_one_host(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    two = tmp_path / "two.yaml"
    one.write_text(BASE)
    two.write_text(BASE.replace("name: t", "name: u"))
    with pytest.raises(MeshError) as info:
        load_meshes([one, two])
    assert any(i.file == str(two) and "also used by mesh 't'" in i.message for i in info.value.items)
    two.write_text(
        BASE.replace("name: t", "name: u").replace(
            "vpn_network: 10.1.0.0/24", "port: 3211\n  vpn_network: 10.1.0.0/24"
        )
    )
    assert [m.mesh.name for m in load_meshes([one, two])] == ["t", "u"]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MeshError) as info:
        load_mesh(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_hosts_block_is_replaced_not_duplicated() -> None:
    mesh = load_mesh_text(BASE)
    block = hosts_block(mesh)
    assert "10.1.0.1 a.t" in block and "10.1.0.2 b.t" in block
    original = "127.0.0.1 localhost\n"
    once = replace_hosts_block(original, "t", block)
    twice = replace_hosts_block(once, "t", block)
    assert once == twice and once.startswith(original)
    assert replace_hosts_block(once, "t", None) == original


# --- property: any valid mesh renders configs the daemon's config loader accepts ------------------


def _seed(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def _keys(names: list[str]) -> KeyView:
    private: dict[str, Any] = {n: SecretStr(base62.encode(_seed(n))) for n in names}
    public: dict[str, Any] = {n: base62.encode(ed25519_public_key(_seed(n))) for n in names}
    return KeyView(private, public, [public[n] for n in sorted(names)])


ALGOS = ["plain", "aes128", "aes256", "chacha20"]


@st.composite
def meshes(draw: st.DrawFn) -> dict[str, Any]:
    prefix = draw(st.sampled_from([16, 24, 28]))
    network = ipaddress.ip_network(f"10.{draw(st.integers(0, 255))}.0.0/{prefix}", strict=False)
    count = draw(st.integers(2, 6))
    hosts = draw(
        st.lists(
            st.integers(1, min(network.num_addresses - 2, 200)), min_size=count, max_size=count, unique=True
        )
    )
    nats = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    nats[draw(st.integers(0, count - 1))] = False  # at least one public node
    nodes = []
    for i in range(count):
        node: dict[str, Any] = {
            "name": f"n{i}",
            "host": f"h{i}",
            "vpn_address": str(network.network_address + hosts[i]),
        }
        if nats[i]:
            node["behind_nat"] = True
        else:
            node["underlay"] = draw(
                st.sampled_from([f"192.0.2.{i + 1}", f"2001:db8::{i + 1}", f"n{i}.example.net"])
            )
        if draw(st.booleans()):
            node["claims"] = [f"172.{16 + i}.{draw(st.integers(0, 255))}.0/24"]
        if draw(st.booleans()):
            node["lan"] = [f"192.168.{i}.1"]
        if draw(st.booleans()):
            node["overrides"] = {
                "port": draw(st.integers(1024, 65535)),
                "peer_timeout": draw(st.integers(1, 100000)),
                "algorithms": draw(st.lists(st.sampled_from(ALGOS), min_size=1, max_size=4, unique=True)),
            }
        nodes.append(node)
    mesh: dict[str, Any] = {
        "name": draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)),
        "mode": draw(st.sampled_from(["normal", "hub", "switch", "router"])),
        "device_type": draw(st.sampled_from(["tun", "tap"])),
        "algorithms": draw(st.lists(st.sampled_from(ALGOS), min_size=1, max_size=4, unique=True)),
        "port": draw(st.integers(1, 65535)),
        "vpn_network": str(network),
        "timers": {"keepalive": draw(st.none() | st.integers(1, 5000))},
    }
    if draw(st.booleans()):
        mesh["auth"] = "password"
        mesh["password"] = draw(st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s))
    data: dict[str, Any] = {"mesh": mesh, "nodes": nodes}
    if draw(st.booleans()):
        data["beacons"] = {"store": "/tmp/{mesh}-{node}.beacon", "password": draw(st.text(max_size=10))}
    return data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meshes())
def test_any_valid_mesh_renders_configs_the_daemon_loader_accepts(data: dict[str, Any]) -> None:
    mesh = MeshFile.model_validate(data)
    assume(not check_mesh(mesh))
    keys = _keys([n.name for n in mesh.nodes])
    for name, rendered in render_mesh(mesh, keys).items():
        text = config_text(mesh, rendered)
        parsed = load_config_text(text)
        config = Config()
        config.merge(parsed)
        config.validate()
        crypto = parsed.crypto
        identity = Identity.from_config(
            password=crypto.password,
            private_key=crypto.private_key,
            public_key=crypto.public_key,
            trusted_keys=crypto.trusted_keys,
        )
        if mesh.mesh.auth == "keys":
            # every node trusts every node, itself included
            assert len(identity.trusted_keys) == len(mesh.nodes)
            assert identity.public_key in identity.trusted_keys
            assert crypto.public_key == keys.public[name]
        else:
            assert identity.trusted_keys == (identity.public_key,)
        node = next(n for n in mesh.nodes if n.name == name)
        assert config.ip == f"{node.vpn_address}/{mesh.mesh.vpn_network.prefixlen}"
        assert config.mode == mesh.mesh.mode and config.device_type == mesh.mesh.device_type
        assert len(config.peers) == len([o for o in mesh.nodes if o.name != name and not o.behind_nat])


# --- the import graph of the mesh package -----------------------------------------------------------


def _local_imports(module: Path) -> set[str]:
    """Sibling modules of vpncloud.mesh that ``module`` imports, at any level (TYPE_CHECKING too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level == 1:
                names.update(a.name for a in node.names)
            elif node.module and node.module.startswith("vpncloud.mesh."):
                names.add(node.module.split(".")[2])
    return names


def test_mesh_modules_import_each_other_without_cycles() -> None:
    package = ROOT / "vpncloud" / "mesh"
    graph = {p.stem: _local_imports(p) for p in package.glob("*.py")}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in graph.get(name, ()):
            visit(dep, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())
