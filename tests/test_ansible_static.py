"""The Ansible collection without deploying: generated specs, syntax, lint, validation, filters, units."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_ansible_support import COLLECTION, PLAYBOOKS, REPO, ansible_env, ansible_missing, playbook, tool

from vpncloud import ansible_specs
from vpncloud.config import Config, load_config_text
from vpncloud.mesh.keystore import Keystore
from vpncloud.mesh.models import MeshFile

pytestmark = pytest.mark.skipif(ansible_missing() is not None, reason=str(ansible_missing()))

sys.path.insert(0, str(COLLECTION / "plugins" / "filter"))
import mesh as mesh_filters  # noqa: E402  (the collection's filter plugin, imported as plain Python)

ROLES = ("node", "beacon", "wsproxy")


def _mesh(**extra: object) -> dict[str, object]:
    data: dict[str, object] = {
        "mesh": {"name": "testnet", "vpn_network": "10.77.0.0/24"},
        "nodes": [
            {"name": "alpha", "host": "alpha", "underlay": "10.99.0.1", "vpn_address": "10.77.0.1"},
            {"name": "beta", "host": "beta", "underlay": "10.99.0.2", "vpn_address": "10.77.0.2"},
            {"name": "gamma", "host": "gamma", "behind_nat": True, "vpn_address": "10.77.0.3"},
        ],
    }
    data.update(extra)
    return data


# --- generated files ---------------------------------------------------------------------------


def test_checked_in_specs_and_defaults_match_the_generator() -> None:
    stale = [
        str(path.relative_to(REPO))
        for path, text in ansible_specs.render_role_files().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert stale == [], f"run `python -m vpncloud.ansible_specs`: stale {stale}"
    # The --check mode of the generator agrees.
    assert ansible_specs.main(["--check"]) == 0


def test_generator_detects_drift(tmp_path: Path) -> None:
    copy = tmp_path / "ansible"
    for path, text in ansible_specs.render_role_files(copy).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert ansible_specs.main(["--check", "--collection", str(copy)]) == 0
    spec = copy / "roles" / "node" / "meta" / "argument_specs.yml"
    spec.write_text(spec.read_text(encoding="utf-8").replace("type: int", "type: str", 1), encoding="utf-8")
    assert ansible_specs.main(["--check", "--collection", str(copy)]) == 1


def test_mesh_option_follows_the_pydantic_models() -> None:
    options = ansible_specs.mesh_option()["options"]
    assert set(options) == {f.alias or name for name, f in MeshFile.model_fields.items()}
    assert {"mesh", "nodes", "beacons", "websocket_proxies"} <= set(options)
    assert options["mesh"]["required"] is True
    mesh = options["mesh"]["options"]
    assert mesh["mode"]["choices"] == ["normal", "hub", "switch", "router"]
    assert mesh["password"]["no_log"] is True  # SecretStr -> never logged by validation
    assert options["beacons"]["options"]["password"]["no_log"] is True
    node = options["nodes"]["options"]
    assert options["nodes"]["elements"] == "dict"
    assert node["vpn_address"]["required"] is True and node["claims"]["elements"] == "str"
    assert node["overrides"]["options"]["peer_timeout"]["type"] == "int"


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_declared_with_the_same_value(role: str) -> None:
    base = COLLECTION / "roles" / role
    defaults = yaml.safe_load((base / "defaults" / "main.yml").read_text(encoding="utf-8"))
    specs = yaml.safe_load((base / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    declared: dict[str, object] = {}
    for entry in specs["argument_specs"].values():
        for name, option in entry["options"].items():
            if "default" in option:
                declared[name] = option["default"]
    assert defaults == declared
    assert all(name.startswith("vpncloud_") and not name.startswith("vpncloud__") for name in defaults)
    text = (base / "defaults" / "main.yml").read_text(encoding="utf-8")
    for name in defaults:  # documented: a comment right above every variable
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
        assert lines[index - 1].startswith("# "), name


# --- syntax, lint ------------------------------------------------------------------------------


@pytest.mark.parametrize("book", sorted(p.name for p in PLAYBOOKS.glob("*.yml")))
def test_playbook_syntax(tmp_path: Path, book: str) -> None:
    run = playbook(tmp_path, book, "--syntax-check", "-i", "localhost,", json_output=False)
    assert run.rc == 0, run.output


def test_syntax_check_catches_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("- hosts: all\n  tasks:\n    - ansible.builtin.debug:\n      msg: [unclosed\n")
    run = playbook(tmp_path, broken, "--syntax-check", "-i", "localhost,", json_output=False)
    assert run.rc != 0


@pytest.mark.timeout(900)
def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    proc = subprocess.run(
        [tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor"],
        cwd=COLLECTION,
        env=ansible_env(tmp_path, json_output=False),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout


# --- argument-spec validation --------------------------------------------------------------------


def _validation_run(tmp_path: Path, mesh: dict[str, object], **role_vars: object) -> str:
    book = tmp_path / "validate.yml"
    play = [
        {
            "name": "Validate",
            "hosts": "alpha",
            "gather_facts": False,
            "roles": [{"role": "vpncloud.mesh.node", "vpncloud_mesh": mesh, **role_vars}],
        }
    ]
    book.write_text(yaml.safe_dump(play))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump({"all": {"hosts": {"alpha": {"ansible_connection": "local",
                                                     "ansible_python_interpreter": sys.executable}}}})
    )  # fmt: skip
    run = playbook(tmp_path, book, "--check", inventory=inventory, json_output=False)
    assert run.rc != 0, "validation should have failed"
    return run.output


def test_bad_enum_fails_with_the_field_named(tmp_path: Path) -> None:
    mesh = _mesh()
    mesh["mesh"] = {"name": "testnet", "vpn_network": "10.77.0.0/24", "mode": "bogus"}
    out = _validation_run(tmp_path, mesh)
    assert "Validating arguments against arg spec" in out
    assert "vpncloud_mesh" in out and "mode" in out and "bogus" in out


def test_unknown_key_fails_like_the_mesh_schema(tmp_path: Path) -> None:
    mesh = _mesh()
    nodes = list(mesh["nodes"])  # type: ignore[call-overload]
    nodes[0] = {**nodes[0], "vpn_adress": "10.77.0.9"}
    mesh["nodes"] = nodes
    out = _validation_run(tmp_path, mesh)
    assert "vpncloud_mesh.nodes.vpn_adress" in out and "Supported parameters include" in out


def test_bad_role_variable_fails(tmp_path: Path) -> None:
    out = _validation_run(tmp_path, _mesh(), vpncloud_state="gone")
    assert "vpncloud_state" in out and "present, absent" in out


def test_secret_in_a_bad_mesh_is_not_echoed(tmp_path: Path) -> None:
    mesh = _mesh()
    mesh["mesh"] = {"name": "testnet", "vpn_network": "10.77.0.0/24", "auth": "keys",
                    "password": "hunter2-do-not-print", "mode": "bogus"}  # fmt: skip
    out = _validation_run(tmp_path, mesh)
    assert "mode" in out
    assert "hunter2-do-not-print" not in out


# --- filters -------------------------------------------------------------------------------------


def test_node_name_by_host_or_explicit() -> None:
    assert mesh_filters.node_name(_mesh(), "beta") == "beta"
    assert mesh_filters.node_name(_mesh(), "elsewhere", "gamma") == "gamma"
    with pytest.raises(Exception, match="no node of mesh 'testnet' has host 'elsewhere'"):
        mesh_filters.node_name(_mesh(), "elsewhere")


def test_cross_field_problems_are_reported() -> None:
    mesh = _mesh()
    nodes = list(mesh["nodes"])  # type: ignore[call-overload]
    nodes[1] = {**nodes[1], "vpn_address": "10.77.0.1"}
    mesh["nodes"] = nodes
    with pytest.raises(Exception, match="duplicate vpn_address"):
        mesh_filters.node_name(mesh, "alpha")


def test_node_config_carries_only_its_own_private_key(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    pairs = {n: store.ensure("testnet", n) for n in ("alpha", "beta", "gamma")}
    text = mesh_filters.node_config(_mesh(), "beta", str(tmp_path / "keys"))
    config = yaml.safe_load(text)
    assert config["crypto"]["private-key"] == pairs["beta"].private_key.get_secret_value()
    for other in ("alpha", "gamma"):
        assert pairs[other].private_key.get_secret_value() not in text
    assert sorted(config["crypto"]["trusted-keys"]) == sorted(p.public_key for p in pairs.values())
    assert config["peers"] == ["10.99.0.1:3210"]  # gamma is behind NAT: nobody connects to it


def test_node_config_rotation_phases(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    old = {n: store.ensure("testnet", n) for n in ("alpha", "beta", "gamma")}
    new = store.ensure("testnet", "alpha", next_key=True)
    keys = str(tmp_path / "keys")
    phase = {
        p: yaml.safe_load(mesh_filters.node_config(_mesh(), "alpha", keys, "alpha", p)) for p in (1, 2, 3)
    }
    assert {old["alpha"].public_key, new.public_key} <= set(phase[1]["crypto"]["trusted-keys"])
    assert phase[1]["crypto"]["private-key"] == old["alpha"].private_key.get_secret_value()
    assert phase[2]["crypto"]["private-key"] == new.private_key.get_secret_value()
    assert old["alpha"].public_key not in phase[3]["crypto"]["trusted-keys"]
    beta3 = yaml.safe_load(mesh_filters.node_config(_mesh(), "beta", keys, "alpha", 3))
    assert new.private_key.get_secret_value() not in str(beta3)
    assert new.public_key in beta3["crypto"]["trusted-keys"]


def test_metrics_listen_from_the_mesh_and_the_role_variable(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    for n in ("alpha", "beta", "gamma"):
        store.ensure("testnet", n)
    keys = str(tmp_path / "keys")
    assert "metrics-listen" not in yaml.safe_load(mesh_filters.node_config(_mesh(), "alpha", keys))
    mesh = _mesh()
    mesh["mesh"] = {**mesh["mesh"], "defaults": {"metrics_listen": "9100"}}  # type: ignore[dict-item]
    nodes = list(mesh["nodes"])  # type: ignore[call-overload]
    nodes[1] = {**nodes[1], "overrides": {"metrics_listen": "0.0.0.0:9200"}}
    mesh["nodes"] = nodes

    def listen(node: str, role_var: str = "") -> object:
        text = mesh_filters.node_config(mesh, node, keys, "", 0, False, role_var)
        cfg = load_config_text(text)  # the daemon reads what the role writes
        config = Config()
        config.merge(cfg)
        config.validate()
        return config.metrics_listen

    assert listen("alpha") == "9100"
    assert listen("beta") == "0.0.0.0:9200"
    assert listen("alpha", "[::1]:9300") == "[::1]:9300"  # the role variable wins
    with pytest.raises(Exception, match="metrics_listen"):
        MeshFile.model_validate(_mesh(mesh={"name": "x", "vpn_network": "10.1.0.0/24",
                                            "defaults": {"metrics_listen": "somewhere"}}))  # fmt: skip
    # moving the endpoint needs a restart (the daemon keeps it over a reload)
    plain = mesh_filters.node_config(_mesh(), "alpha", keys)
    with_metrics = mesh_filters.node_config(mesh, "alpha", keys)
    assert mesh_filters.restart_fingerprint(plain) != mesh_filters.restart_fingerprint(with_metrics)


def test_handshake_guard_from_the_mesh_and_the_role_variable(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    for n in ("alpha", "beta", "gamma"):
        store.ensure("testnet", n)
    keys = str(tmp_path / "keys")
    mesh = _mesh()
    mesh["mesh"] = {**mesh["mesh"], "defaults": {"handshake_guard": {"max_pending": 32}}}  # type: ignore[dict-item]

    def guard(role_var: object = None) -> dict[str, object]:
        text = mesh_filters.node_config(mesh, "alpha", keys, "", 0, False, "", role_var)
        config = Config()
        config.merge(load_config_text(text))  # the daemon reads what the role writes
        config.validate()
        return config.handshake_guard.given()

    assert guard() == {"max_pending": 32}
    assert guard({"replay_ttl": 600, "max_pending": 8}) == {"max_pending": 8, "replay_ttl": 600.0}
    for bad in ({"max_pendin": 1}, {"max_pending": 0}, {"global_rate": "fast"}):
        with pytest.raises(Exception, match="vpncloud_handshake_guard is invalid: " + next(iter(bad))):
            guard(bad)
    # the daemon reads the limits at start only: a change needs a restart
    plain = mesh_filters.node_config(mesh, "alpha", keys)
    changed = mesh_filters.node_config(mesh, "alpha", keys, "", 0, False, "", {"max_pending": 8})
    assert mesh_filters.restart_fingerprint(plain) != mesh_filters.restart_fingerprint(changed)


def test_missing_key_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="key is missing in the keystore"):
        mesh_filters.node_config(_mesh(), "alpha", str(tmp_path / "empty"))


def test_check_mode_shows_keys_known_after_apply(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    alpha = store.ensure("testnet", "alpha")
    config = yaml.safe_load(mesh_filters.node_config(_mesh(), "beta", str(tmp_path / "keys"), "", 0, True))
    assert config["crypto"]["private-key"] == "(known after apply)"
    assert alpha.public_key in config["crypto"]["trusted-keys"]
    assert "(known after apply)" in config["crypto"]["trusted-keys"]


def test_restart_fingerprint_separates_reload_from_restart(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "keys")
    for n in ("alpha", "beta", "gamma"):
        store.ensure("testnet", n)
    keys = str(tmp_path / "keys")

    def fingerprint(mesh: dict[str, object]) -> dict[str, object]:
        return mesh_filters.restart_fingerprint(mesh_filters.node_config(mesh, "alpha", keys))

    base = fingerprint(_mesh())
    assert "private" not in str(base) and len(str(base["identity"])) == 16
    timers = _mesh()
    timers["mesh"] = {**timers["mesh"], "timers": {"peer_timeout": 120}}  # type: ignore[dict-item]
    assert fingerprint(timers) == base  # reload is enough
    for change in ({"port": 3300}, {"mode": "switch"}, {"device_type": "tap"}):
        changed = _mesh()
        changed["mesh"] = {**changed["mesh"], **change}  # type: ignore[dict-item]
        assert fingerprint(changed) != base, change
    # hooks that only run at start (the switch scenario's ifup moving the TAP into a bridge)
    hooked = _mesh()
    hooked["mesh"] = {**hooked["mesh"], "defaults": {"ifup": "ip link set dev $IFNAME master br0"}}  # type: ignore[dict-item]
    assert fingerprint(hooked) != base
    store.ensure("testnet", "alpha", next_key=True)
    rotated = mesh_filters.restart_fingerprint(mesh_filters.node_config(_mesh(), "alpha", keys, "alpha", 2))
    assert rotated["identity"] != base["identity"]


def test_expected_peers_and_status_count() -> None:
    assert mesh_filters.expected_peers(_mesh(), "alpha") == ["beta", "gamma"]
    assert mesh_filters.expected_peers(_mesh(), "gamma") == ["alpha", "beta"]
    assert mesh_filters.peer_count('{"peers": [{"addr": "a"}, {"addr": "b"}]}') == 2
    assert mesh_filters.peer_count("not json") == 0


def test_beacon_files_expand_and_skip_commands() -> None:
    mesh = _mesh(beacons={"store": "/run/vc/{mesh}-{node}.beacon", "load": "|cat /x"})
    assert mesh_filters.beacon_files(mesh) == [
        f"/run/vc/testnet-{n}.beacon" for n in ("alpha", "beta", "gamma")
    ]


def test_hosts_block_filter_gives_blockinfile_the_block_apply_writes() -> None:
    from vpncloud.mesh.render import hosts_block

    parts = mesh_filters.hosts_block(_mesh())
    # blockinfile writes "# BEGIN-marker", the block and "# END-marker": exactly apply's block
    assembled = f"# {parts['begin']}\n{parts['block']}\n# {parts['end']}\n"
    assert assembled == hosts_block(MeshFile.model_validate(_mesh()))
    assert parts["begin"].startswith("BEGIN vpncloud mesh testnet")
    assert parts["end"] == "END vpncloud mesh testnet"
    assert len(parts["block"].splitlines()) == 3 and " beta.testnet" in parts["block"]


# --- units ---------------------------------------------------------------------------------------


def _directives(text: str) -> dict[str, list[str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    result: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        result.setdefault(f"{section}{key}", []).append(value)
    return result


def _render(template: Path, **values: str) -> str:
    import jinja2

    return jinja2.Template(template.read_text(encoding="utf-8")).render(**values)


NODE_VALUES = {"vpncloud_venv": "/opt/vpncloud", "vpncloud_config_dir": "/etc/vpncloud",
               "vpncloud_log_dir": "/var/log", "vpncloud_control_dir": "/run/vpncloud"}  # fmt: skip


@pytest.mark.parametrize(
    ("template", "asset", "values"),
    [
        ("node/templates/vpncloud@.service.j2", "vpncloud@.service", NODE_VALUES),
        ("node/templates/vpncloud.target.j2", "vpncloud.target", {}),
        ("wsproxy/templates/vpncloud-wsproxy.service.j2", "vpncloud-wsproxy.service",
         {"vpncloud_venv": "/opt/vpncloud", "vpncloud__proxy": {"port": 3210}}),
    ],
)  # fmt: skip
def test_units_keep_the_daemon_assets_hardening(template: str, asset: str, values: dict[str, object]) -> None:
    asset_path = REPO / "vpncloud" / "assets" / asset
    if not asset_path.exists():
        pytest.skip(f"{asset} is not in vpncloud/assets yet")
    ours = _directives(_render(COLLECTION / "roles" / template, **values))  # type: ignore[arg-type]
    theirs = _directives(asset_path.read_text(encoding="utf-8"))
    # Only where the daemon runs from differs: the virtualenv, and a fixed control socket path.
    for key in ("[Service]ExecStart",):
        theirs.pop(key, None)
        ours_exec = ours.pop(key, None)
        if ours_exec:
            assert ours_exec[0].startswith("/opt/vpncloud/bin/vpncloud ")
    assert ours == theirs


@pytest.mark.parametrize(
    ("kernels", "env"), [(None, []), ("auto", []), ("python", ["VPNCLOUD_PURE_PYTHON=1"])]
)
def test_node_unit_selects_the_kernels(kernels: str | None, env: list[str]) -> None:
    values = dict(NODE_VALUES) if kernels is None else {**NODE_VALUES, "vpncloud_dataplane_kernels": kernels}
    unit = _directives(_render(COLLECTION / "roles/node/templates/vpncloud@.service.j2", **values))
    assert unit.get("[Service]Environment", []) == env


def test_node_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = subprocess.run(["which", "systemd-analyze"], capture_output=True, text=True, check=False)
    if analyze.returncode != 0:
        pytest.skip("systemd-analyze is not installed")
    venv = Path(sys.executable).parent.parent
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    values = {**NODE_VALUES, "vpncloud_venv": str(venv)}
    (unit_dir / "vpncloud@.service").write_text(
        _render(COLLECTION / "roles/node/templates/vpncloud@.service.j2", **values)
    )
    (unit_dir / "vpncloud.target").write_text(_render(COLLECTION / "roles/node/templates/vpncloud.target.j2"))
    instance = unit_dir / "vpncloud@testnet.service"
    instance.symlink_to(unit_dir / "vpncloud@.service")
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(instance)],
        capture_output=True,
        text=True,
        check=False,
        env={"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    problems = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "vpncloud" in line and "network-online.target" not in line
    ]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


# --- example fleet inventory ---------------------------------------------------------------------


def test_fleet_inventory_maps_every_node_host_to_a_node(tmp_path: Path) -> None:
    fleet = REPO / "inventories" / "fleet"
    if not (fleet / "hosts.yml").exists() or not (fleet / "mesh.yaml").exists():
        pytest.skip("the fleet inventory is not there yet")
    proc = subprocess.run(
        [tool("ansible-inventory"), "-i", str(fleet / "hosts.yml"), "-i", str(fleet / "ansible"), "--list"],
        env=ansible_env(tmp_path, json_output=False),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    inventory = json.loads(proc.stdout)

    def hosts_of(group: str) -> set[str]:
        entry = inventory.get(group, {})
        found = set(entry.get("hosts", []))
        for child in entry.get("children", []):
            found |= hosts_of(child)
        return found

    nodes = hosts_of("vpncloud_nodes")
    assert nodes, "the playbooks' group vpncloud_nodes is empty"
    mesh = yaml.safe_load((fleet / "mesh.yaml").read_text(encoding="utf-8"))
    assert {mesh_filters.node_name(mesh, host) for host in nodes} == {n["name"] for n in mesh["nodes"]}
    assert "Unable to parse" not in proc.stderr


def test_config_src_copies_a_config_rendered_by_apply(tmp_path: Path) -> None:
    """The `vpncloud apply` hand-off: a rendered config is copied as is, 0600, with no output of it."""
    rendered = tmp_path / "state" / "testnet" / "alpha.net"
    rendered.parent.mkdir(parents=True)
    secret = "config-src-secret-value-1234"
    rendered.write_text(f"# rendered by apply\nlisten: 3210\ncrypto:\n  private-key: {secret}\n")
    root = tmp_path / "root"
    book = tmp_path / "copy.yml"
    play = [
        {
            "name": "Copy a rendered config",
            "hosts": "alpha",
            "gather_facts": False,
            "roles": [
                {
                    "role": "vpncloud.mesh.node",
                    "vpncloud_mesh": _mesh(),
                    "vpncloud_config_src": str(rendered),
                    "vpncloud_root": str(root),
                    "vpncloud_install_method": "none",
                    "vpncloud_manage_service": False,
                }
            ],
        }
    ]
    book.write_text(yaml.safe_dump(play))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump({"all": {"hosts": {"alpha": {"ansible_connection": "local",
                                                     "ansible_python_interpreter": sys.executable}}}})
    )  # fmt: skip
    for expected_changes in (True, False):
        run = playbook(tmp_path, book, "-v", "--diff", inventory=inventory)
        assert run.rc == 0, run.output[-3000:]
        assert secret not in run.output
        assert (run.stats()["alpha"]["changed"] > 0) is expected_changes
    deployed = root / "etc" / "vpncloud" / "testnet.net"
    assert deployed.read_bytes() == rendered.read_bytes()
    assert deployed.stat().st_mode & 0o777 == 0o600


def test_security_file_is_what_apply_writes_per_node(tmp_path: Path) -> None:
    from test_mesh_plan import FakeTarget

    from vpncloud.mesh.apply import apply_mesh
    from vpncloud.mesh.keystore import Keystore
    from vpncloud.mesh.loader import load_mesh_text

    data = _mesh(key_expiry={"alpha": "2031-01-01"})
    nodes = list(data["nodes"])  # type: ignore[call-overload]
    data["nodes"] = [
        *nodes,
        {"name": "delta", "host": "delta", "behind_nat": True, "vpn_address": "10.77.0.4"},
    ]
    keys, state = tmp_path / "keys", tmp_path / "state"
    apply_mesh(load_mesh_text(yaml.safe_dump(data)), Keystore(keys), state, FakeTarget())
    texts = {n: mesh_filters.security_file(data, n, str(keys)) for n in ("alpha", "beta", "gamma", "delta")}
    for name, text in texts.items():
        assert text == (state / "testnet" / f"{name}.security.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(texts["alpha"])["relay"] == {"offer": True, "use": False}
    assert yaml.safe_load(texts["gamma"])["relay"] == {"offer": False, "use": True}
    assert len(yaml.safe_load(texts["gamma"])["key_expiry"]) == 1
    # switching relay use needs a restart (the TUN MTU is set at start); offering does not
    config = mesh_filters.node_config(data, "gamma", str(keys))
    fp = mesh_filters.restart_fingerprint
    assert fp(config, texts["gamma"]) != fp(config, "")
    assert fp(config, texts["alpha"]) == fp(config, "")
    # a mesh without ACL, key expiry and relays has no security file
    assert mesh_filters.security_file(_mesh(), "gamma", str(keys)) == ""
