"""Real ansible-playbook runs of the collection against targets on this machine.

Targets: two inventory hosts, ``alpha`` and ``beta``, reached with ``ansible_connection=local``; each
deploys into its own prefix (``vpncloud_root``) under a temporary directory, so nothing of the host's
/etc, /opt or systemd is touched. systemd is not PID 1 here, so ``vpncloud_manage_service: false``;
the deployed daemons are then started from the deployed virtualenvs in network namespaces and the
playbook's health check asks them through ``vpncloud status --json``. (The molecule scenarios run the
same roles with systemd in containers.)

The tests form one scenario, in order: check mode on fresh hosts, real run, idempotence, check mode on
deployed hosts, reload vs restart decisions, health check against running daemons, key rotation,
removal. Every run's output is searched for every private key of the keystore.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from test_ansible_support import Run, ansible_missing, playbook

from vpncloud.lab.netns import Topology, requirements_missing
from vpncloud.mesh.apply import AnsibleTarget, _public_keys, write_configs
from vpncloud.mesh.keystore import Keystore
from vpncloud.mesh.loader import load_mesh
from vpncloud.mesh.plan import key_view
from vpncloud.mesh.render import config_text, hosts_block, render_mesh, replace_hosts_block
from vpncloud.mesh.status import fleet_mesh_status

pytestmark = [
    pytest.mark.skipif(ansible_missing() is not None, reason=str(ansible_missing())),
    pytest.mark.timeout(900),
]

HOSTS = ("alpha", "beta")
MESH = "testnet"
#: What each host's hosts file holds before the role runs; the role must keep it and add only its block.
HOSTS_FILE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"


@dataclass
class Fleet:
    """The scenario's files: mesh, keystore, inventory, per-host roots, and every run made."""

    tmp: Path
    runs: list[Run] = field(default_factory=list)

    @property
    def mesh_file(self) -> Path:
        return self.tmp / "mesh.yaml"

    @property
    def keys(self) -> Path:
        return self.tmp / "keys"

    @property
    def inventory(self) -> Path:
        return self.tmp / "hosts.yml"

    @property
    def wheelhouse(self) -> Path:
        return self.tmp / "wheelhouse"

    def root(self, host: str) -> Path:
        return self.tmp / f"root-{host}"

    def config(self, host: str) -> Path:
        return self.root(host) / "etc" / "vpncloud" / f"{MESH}.net"

    def venv_bin(self, host: str) -> Path:
        return self.root(host) / "opt" / "vpncloud" / "bin" / "vpncloud"

    def hosts_file(self, host: str) -> Path:
        return self.root(host) / "etc" / "hosts"

    def socket(self, host: str) -> Path:
        return self.root(host) / "run" / "vpncloud" / f"{MESH}.sock"

    def write_mesh(self, nodes: dict[str, dict[str, object]] | None = None, **mesh_settings: object) -> None:
        """``nodes``: extra fields per node name."""
        data = {
            "mesh": {"name": MESH, "vpn_network": "10.77.0.0/24", "port": 3210, **mesh_settings},
            "nodes": [
                {
                    "name": h,
                    "host": h,
                    "underlay": f"10.99.0.{i}",
                    "vpn_address": f"10.77.0.{i}",
                    **(nodes or {}).get(h, {}),
                }
                for i, h in enumerate(HOSTS, start=1)
            ],
            "beacons": {"store": str(self.tmp / "beacons" / "{mesh}-{node}.beacon"), "interval": 3600},
            "websocket_proxies": [{"name": "wsp", "host": "alpha", "port": 3280}],
        }
        self.mesh_file.write_text(yaml.safe_dump(data, sort_keys=False))

    def secrets(self) -> list[str]:
        """Every private key in the keystore (current, next, retired)."""
        return [p.read_text().strip() for p in (self.keys / MESH).glob("*.key")]

    def play(self, book: str, *args: str) -> Run:
        run = playbook(
            self.tmp, book, *args, "-e", f"vpncloud_wheelhouse={self.wheelhouse}", inventory=self.inventory
        )
        self.runs.append(run)
        for secret in self.secrets():
            assert secret not in run.output, f"a private key appeared in the output of {book} {args}"
        return run


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    fleet.write_mesh()
    # alpha's key exists (made by `vpncloud apply`); beta's is created by site.yml on the controller.
    Keystore(fleet.keys).ensure(MESH, "alpha")
    for host in HOSTS:
        fleet.hosts_file(host).parent.mkdir(parents=True)
        fleet.hosts_file(host).write_text(HOSTS_FILE)
    import sys

    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "vpncloud_mesh_file": str(fleet.mesh_file),
                "vpncloud_keystore": str(fleet.keys),
                "vpncloud_manage_service": False,
                "vpncloud_python": "/usr/bin/python3",
            },
            "children": {
                "vpncloud_nodes": {"hosts": {h: {"vpncloud_root": str(fleet.root(h))} for h in HOSTS}},
                "vpncloud_beacon": {"hosts": {"alpha": {}}},
                "vpncloud_wsproxy": {"hosts": {"alpha": {}}},
            },
        }
    }
    fleet.inventory.write_text(yaml.safe_dump(inventory))
    return fleet


def _changed(run: Run) -> dict[str, int]:
    return {host: stats["changed"] for host, stats in run.stats().items()}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()) if root.exists() else []


def test_check_mode_on_fresh_hosts_writes_nothing(fleet: Fleet) -> None:
    run = fleet.play("site.yml", "--check", "--diff", "-e", "vpncloud_health_check=false")
    assert run.rc == 0, run.output[-3000:]
    stats = run.stats()
    assert stats["alpha"]["changed"] > 0 and stats["beta"]["changed"] > 0  # it would change things
    for host in HOSTS:
        assert _files(fleet.root(host)) == [fleet.hosts_file(host)]
        assert fleet.hosts_file(host).read_text() == HOSTS_FILE
    assert not (fleet.tmp / "wheelhouse.tar").exists()
    assert Keystore(fleet.keys).get(MESH, "beta") is None  # would be created, is not


def test_real_run_deploys_files_with_safe_modes(fleet: Fleet) -> None:
    run = fleet.play("site.yml", "--diff", "-e", "vpncloud_health_check=false")
    assert run.rc == 0, run.output[-3000:]
    assert (fleet.tmp / "wheelhouse.tar").is_file()  # the controller built and packed the wheelhouse
    assert list(fleet.wheelhouse.glob("vpncloud-*.whl"))
    assert (fleet.keys / MESH / "beta.key").stat().st_mode & 0o777 == 0o600  # created on the controller
    pairs = {h: Keystore(fleet.keys).get(MESH, h) for h in HOSTS}
    mesh = load_mesh(fleet.mesh_file)
    rendered = render_mesh(mesh, key_view(mesh, Keystore(fleet.keys)))
    for host in HOSTS:
        root = fleet.root(host)
        config_path = fleet.config(host)
        # Byte for byte what `vpncloud apply` renders for this node.
        assert config_path.read_text() == config_text(mesh, rendered[host])
        assert config_path.stat().st_mode & 0o777 == 0o600
        assert config_path.parent.stat().st_mode & 0o777 == 0o700
        config = yaml.safe_load(config_path.read_text())
        own = pairs[host]
        assert own is not None
        assert config["crypto"]["private-key"] == own.private_key.get_secret_value()
        assert config["crypto"]["public-key"] == own.public_key
        other = pairs["beta" if host == "alpha" else "alpha"]
        assert other is not None
        assert other.private_key.get_secret_value() not in config_path.read_text()  # never another's key
        assert sorted(config["crypto"]["trusted-keys"]) == sorted(p.public_key for p in pairs.values() if p)
        assert config["listen"] == "3210" and config["device"]["type"] == "tun"
        # The host's own lines stay; the block names every node, as `vpncloud apply` writes it.
        assert fleet.hosts_file(host).read_text() == replace_hosts_block(HOSTS_FILE, MESH, hosts_block(mesh))
        assert "10.77.0.2 beta.testnet" in fleet.hosts_file(host).read_text()
        unit = root / "etc" / "systemd" / "system" / "vpncloud@.service"
        assert unit.stat().st_mode & 0o777 == 0o644
        text = unit.read_text()
        assert "ExecStart=/opt/vpncloud/bin/vpncloud --config /etc/vpncloud/%i.net" in text
        assert "--control-socket /run/vpncloud/%i.sock" in text and "NoNewPrivileges=yes" in text
        assert (root / "etc" / "systemd" / "system" / "vpncloud.target").is_file()
        version = subprocess.run(
            [fleet.venv_bin(host), "--version"], capture_output=True, text=True, check=False
        )
        assert version.returncode == 0 and "2.4" in version.stdout
    # The beacon host prepared the shared beacon store directory (inside its prefix).
    assert (fleet.root("alpha") / str(fleet.tmp / "beacons").lstrip("/")).is_dir()
    assert not (fleet.root("beta") / str(fleet.tmp / "beacons").lstrip("/")).exists()
    # The WebSocket proxy of alpha runs from the same virtualenv, on its port.
    proxy_unit = fleet.root("alpha") / "etc" / "systemd" / "system" / "vpncloud-wsproxy.service"
    assert "ExecStart=/opt/vpncloud/bin/vpncloud ws-proxy -l 3280" in proxy_unit.read_text()
    assert not (fleet.root("beta") / "etc" / "systemd" / "system" / "vpncloud-wsproxy.service").exists()


def test_second_run_changes_nothing(fleet: Fleet) -> None:
    run = fleet.play("site.yml", "-e", "vpncloud_health_check=false")
    assert run.rc == 0, run.output[-3000:]
    assert _changed(run) == {"localhost": 0, "alpha": 0, "beta": 0}, {h: run.changed_tasks(h) for h in HOSTS}


def test_check_mode_on_deployed_hosts_reports_no_change(fleet: Fleet) -> None:
    run = fleet.play("site.yml", "--check", "--diff", "-e", "vpncloud_health_check=false")
    assert run.rc == 0, run.output[-3000:]
    assert _changed(run) == {"localhost": 0, "alpha": 0, "beta": 0}


RESTART_TASK = "Request a restart (device, listen address, mode or key changed)"
CONFIG_TASK = "Write the config with the node's own private key"


def test_reload_by_default_restart_only_for_device_port_mode(fleet: Fleet) -> None:
    try:
        fleet.write_mesh(timers={"peer_timeout": 120})
        run = fleet.play("site.yml", "--tags", "config", "-e", "vpncloud_health_check=false")
        assert run.rc == 0, run.output[-3000:]
        for host in HOSTS:
            changed = run.changed_tasks(host)
            assert CONFIG_TASK in changed and RESTART_TASK not in changed, changed
        assert yaml.safe_load(fleet.config("alpha").read_text())["peer-timeout"] == 120
        # The secret file's content never shows up, not even censored values of it.
        result = run.task_result("alpha", CONFIG_TASK)
        assert result is not None and "content" not in json.dumps(result.get("invocation", {}))

        fleet.write_mesh(timers={"peer_timeout": 120}, port=3300)
        run = fleet.play("site.yml", "--tags", "config", "-e", "vpncloud_health_check=false")
        assert run.rc == 0, run.output[-3000:]
        for host in HOSTS:
            assert RESTART_TASK in run.changed_tasks(host)
    finally:
        fleet.write_mesh()
        run = fleet.play("site.yml", "--tags", "config", "-e", "vpncloud_health_check=false")
    assert run.rc == 0 and RESTART_TASK in run.changed_tasks("alpha")  # back to port 3210: restart


SECURITY_TASK = "Write the security file (ACL, key expiry, the node's relays; no secrets)"


def test_relay_section_is_deployed_as_apply_writes_it(fleet: Fleet, tmp_path: Path) -> None:
    """beta uses relays, so alpha (public) offers: each host gets its own relay section, byte for
    byte the file `vpncloud apply` writes for that node; back without relays, the files go."""
    try:
        fleet.write_mesh(nodes={"beta": {"use_relays": True}})
        run = fleet.play("site.yml", "--tags", "config", "-e", "vpncloud_health_check=false")
        assert run.rc == 0, run.output[-3000:]
        mesh = load_mesh(fleet.mesh_file)
        keys = key_view(mesh, Keystore(fleet.keys))
        write_configs(mesh, render_mesh(mesh, keys), tmp_path, _public_keys(keys))
        for host in HOSTS:
            assert SECURITY_TASK in run.changed_tasks(host)
            deployed = fleet.config(host).with_name(f"{MESH}.security.yaml")
            assert deployed.read_text() == (tmp_path / MESH / f"{host}.security.yaml").read_text()
            assert deployed.stat().st_mode & 0o777 == 0o600
        relay = {
            h: yaml.safe_load(fleet.config(h).with_name(f"{MESH}.security.yaml").read_text())["relay"]
            for h in HOSTS
        }
        assert relay == {"alpha": {"offer": True, "use": False}, "beta": {"offer": False, "use": True}}
        # relay use changes beta's MTU, which only a restart applies; alpha's offer is a reload
        assert RESTART_TASK in run.changed_tasks("beta") and RESTART_TASK not in run.changed_tasks("alpha")
    finally:
        fleet.write_mesh()
        run = fleet.play("site.yml", "--tags", "config", "-e", "vpncloud_health_check=false")
    assert run.rc == 0, run.output[-3000:]
    for host in HOSTS:
        assert not fleet.config(host).with_name(f"{MESH}.security.yaml").exists()


def test_guard_limits_are_deployed_as_apply_writes_them_and_restart(fleet: Fleet, tmp_path: Path) -> None:
    """mesh.yaml's handshake_guard reaches each host as `vpncloud apply` renders it, with the role
    variable vpncloud_handshake_guard over it key by key: byte for byte apply's config of the same
    mesh with the variable's keys in its defaults. The daemon reads the guard at start only, so a
    change restarts (a reload would keep the old limits silently)."""
    guard = {"max_pending_per_host": 2, "global_rate": 150.5}
    role_var = {"replay_ttl": 600}
    try:
        fleet.write_mesh(nodes={"beta": {"overrides": {"handshake_guard": {"max_pending": 32}}}}, defaults={
            "handshake_guard": guard
        })  # fmt: skip
        extra = json.dumps({"vpncloud_health_check": False, "vpncloud_handshake_guard": role_var})
        run = fleet.play("site.yml", "--tags", "config", "-e", extra)
        assert run.rc == 0, run.output[-3000:]
        data = yaml.safe_load(fleet.mesh_file.read_text())
        data["mesh"]["defaults"]["handshake_guard"].update(role_var)
        equivalent = tmp_path / "mesh.yaml"
        equivalent.write_text(yaml.safe_dump(data, sort_keys=False))
        mesh = load_mesh(equivalent)
        rendered = render_mesh(mesh, key_view(mesh, Keystore(fleet.keys)))
        for host in HOSTS:
            assert fleet.config(host).read_text() == config_text(mesh, rendered[host])
            assert RESTART_TASK in run.changed_tasks(host)
        sections = {h: yaml.safe_load(fleet.config(h).read_text())["handshake-guard"] for h in HOSTS}
        assert sections == {
            "alpha": {"global-rate": 150.5, "max-pending-per-host": 2, "replay-ttl": 600.0},
            "beta": {"global-rate": 150.5, "max-pending-per-host": 2, "max-pending": 32, "replay-ttl": 600.0},
        }
    finally:
        fleet.write_mesh()
        run = fleet.play("site.yml", "--tags", "config", "-e", "vpncloud_health_check=false")
    assert run.rc == 0, run.output[-3000:]
    for host in HOSTS:
        assert "handshake-guard" not in fleet.config(host).read_text()
        assert RESTART_TASK in run.changed_tasks(host)


@pytest.fixture
def daemons(fleet: Fleet) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The deployed daemons, started from their virtualenvs in one namespace each."""
    missing = requirements_missing()
    if missing:
        pytest.skip("needs: " + ", ".join(missing))
    with Topology() as topo:
        topo.switch()
        procs = {}
        for i, host in enumerate(HOSTS, start=1):
            ns = topo.node(host, f"10.99.0.{i}/24")
            log = (fleet.tmp / f"{host}.log").open("wb")
            procs[host] = topo.spawn(
                ns,
                [str(fleet.venv_bin(host)), "--config", str(fleet.config(host)),
                 "--control-socket", str(fleet.socket(host))],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        yield procs


def _status(fleet: Fleet, host: str) -> dict[str, object] | None:
    proc = subprocess.run(
        [fleet.venv_bin(host), "status", "--json", "--socket", str(fleet.socket(host))],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size, p.stat().st_mode) for p in _files(root)}


def _wait_answering(fleet: Fleet, hosts: tuple[str, ...], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(_status(fleet, h) is None for h in hosts):
        assert time.monotonic() < deadline, "the daemons never answered on their control sockets"
        time.sleep(0.1)


def _target(fleet: Fleet, inventory: Path) -> AnsibleTarget:
    target = AnsibleTarget(state_dir=fleet.tmp / "state", keystore=fleet.keys, inventory=inventory)
    target.mesh_file = str(fleet.mesh_file)
    return target


@pytest.mark.netns
def test_refresh_reads_every_host_and_changes_nothing(
    fleet: Fleet, daemons: dict[str, subprocess.Popen[bytes]]
) -> None:
    mesh = load_mesh(fleet.mesh_file)
    rendered = render_mesh(mesh, key_view(mesh, Keystore(fleet.keys)))
    want = {h: hashlib.sha256(config_text(mesh, rendered[h]).encode()).hexdigest() for h in HOSTS}
    _wait_answering(fleet, HOSTS)
    deadline = time.monotonic() + 30
    while any(len(s["peers"]) != 1 for s in (_status(fleet, h) or {"peers": []} for h in HOSTS)):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the two daemons never connected"
        time.sleep(0.2)
    before = {h: _snapshot(fleet.root(h)) for h in HOSTS}
    facts = _target(fleet, fleet.inventory).facts(mesh)
    assert {h: _snapshot(fleet.root(h)) for h in HOSTS} == before  # read-only
    whole = fleet_mesh_status(mesh, Keystore(fleet.keys), facts)
    assert whole.whole, whole.problems
    assert whole.connected == {
        "alpha": {"alpha": False, "beta": True},
        "beta": {"alpha": True, "beta": False},
    }
    assert all(n.up and n.public_key_matches for n in whole.nodes)
    for host in HOSTS:
        f = facts[host]
        assert f.reachable and f.error is None and f.node == host
        assert f.config_exists and f.config_sha256 == want[host] and f.config_mode == "0600"
        assert f.running and f.status is not None and "2.4" in str(f.status["version"])
        assert not f.unit_managed and f.unit_active is None  # vpncloud_manage_service: false here

    # Changed outside vpncloud: beta's config edited by hand, beta's daemon stopped.
    original = fleet.config("beta").read_text()
    try:
        with fleet.config("beta").open("a") as f:
            f.write("# edited on the host\n")
        daemons["beta"].terminate()
        daemons["beta"].wait(timeout=10)
        facts = _target(fleet, fleet.inventory).facts(mesh)
        assert facts["beta"].reachable and facts["beta"].config_sha256 != want["beta"]
        assert not facts["beta"].running and facts["beta"].status_error
        assert facts["alpha"].running and facts["alpha"].config_sha256 == want["alpha"]
        broken = fleet_mesh_status(mesh, Keystore(fleet.keys), facts)
        assert not broken.whole and "beta: " in broken.problems[0]
        assert not broken.connected["alpha"]["beta"] or "alpha -> beta: not connected" not in broken.problems
    finally:
        fleet.config("beta").write_text(original)


def test_refresh_reports_an_unreachable_host_and_reads_the_others(fleet: Fleet) -> None:
    inventory = yaml.safe_load(fleet.inventory.read_text())
    # beta over SSH to a closed port on this machine: refused at once, no traffic leaves the host
    inventory["all"]["children"]["vpncloud_nodes"]["hosts"]["beta"].update(
        ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=1, ansible_user="nobody"
    )
    path = fleet.tmp / "hosts-unreachable.yml"
    path.write_text(yaml.safe_dump(inventory))
    facts = _target(fleet, path).facts(load_mesh(fleet.mesh_file))
    assert not facts["beta"].reachable and facts["beta"].error is not None
    assert facts["beta"].error.startswith("unreachable:"), facts["beta"].error
    assert facts["alpha"].reachable and facts["alpha"].config_exists


@pytest.mark.netns
def test_health_check_asks_the_running_daemons(
    fleet: Fleet, daemons: dict[str, subprocess.Popen[bytes]]
) -> None:
    run = fleet.play("site.yml", "--tags", "health", "-e", "vpncloud_health_timeout=30")
    assert run.rc == 0, run.output[-3000:]
    for host in HOSTS:
        result = run.task_result(host, "Check that every expected peer is connected")
        assert result is not None and not result.get("failed")
        assert "1 expected peers connected" in result["msg"]
        status = _status(fleet, host)
        assert status is not None and len(status["peers"]) == 1  # type: ignore[arg-type]

    # One node down: the rollout must stop with a clear message.
    daemons["beta"].terminate()
    daemons["beta"].wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # alpha notices the CLOSE of beta
        status = _status(fleet, "alpha")
        if status is not None and not status["peers"]:
            break
        time.sleep(0.2)
    run = fleet.play("site.yml", "--tags", "health", "-e", "vpncloud_health_timeout=2")
    assert run.rc != 0
    # beta's daemon is down, so it does not count as running: alpha's batch does not wait for it
    # (a rollout repairing beta must get to beta's batch), and beta's own batch stops the rollout.
    result = run.task_result("alpha", "Check that every expected peer is connected")
    assert result is not None and not result.get("failed"), result
    result = run.task_result("beta", "Check that every expected peer is connected")
    assert result is not None and result.get("failed")
    assert "0 peers connected" in result["msg"] and "expected 1 (alpha)" in result["msg"]


def test_rotation_switches_the_key_in_phases(fleet: Fleet) -> None:
    store = Keystore(fleet.keys)
    old = store.get(MESH, "alpha")
    assert old is not None
    run = fleet.play("rotate.yml", "-e", "vpncloud_rotate_node=alpha", "-e", "vpncloud_health_check=false")
    assert run.rc == 0, run.output[-3000:]
    new = store.get(MESH, "alpha")
    assert new is not None and new.public_key != old.public_key
    assert store.get(MESH, "alpha", next_key=True) is None
    assert (fleet.keys / MESH / "alpha.retired.key").exists()
    alpha = yaml.safe_load(fleet.config("alpha").read_text())
    beta = yaml.safe_load(fleet.config("beta").read_text())
    assert alpha["crypto"]["private-key"] == new.private_key.get_secret_value()
    assert new.public_key in beta["crypto"]["trusted-keys"]
    assert old.public_key not in beta["crypto"]["trusted-keys"]
    assert new.private_key.get_secret_value() not in fleet.config("beta").read_text()
    # Phase 2 restarts only the rotating node; phases 1 and 3 reload everybody.
    restarts = {h: run.changed_tasks(h).count(RESTART_TASK) for h in HOSTS}
    assert restarts == {"alpha": 1, "beta": 0}
    assert {h: run.changed_tasks(h).count(CONFIG_TASK) for h in HOSTS} == {"alpha": 3, "beta": 2}
    # The mesh has converged: a normal rollout changes nothing.
    run = fleet.play("site.yml", "-e", "vpncloud_health_check=false")
    assert run.rc == 0 and _changed(run) == {"localhost": 0, "alpha": 0, "beta": 0}


def test_state_absent_removes_everything(fleet: Fleet) -> None:
    run = fleet.play("site.yml", "-e", "vpncloud_state=absent", "-e", "vpncloud_health_check=false")
    assert run.rc == 0, run.output[-3000:]
    for host in HOSTS:
        # everything the role made is gone; the hosts file is back to what the host had, byte for byte
        assert _files(fleet.root(host)) == [fleet.hosts_file(host)], _files(fleet.root(host))[:10]
        assert fleet.hosts_file(host).read_text() == HOSTS_FILE
    run = fleet.play("site.yml", "-e", "vpncloud_state=absent", "-e", "vpncloud_health_check=false")
    assert run.rc == 0 and _changed(run)["alpha"] == 0 and _changed(run)["beta"] == 0
