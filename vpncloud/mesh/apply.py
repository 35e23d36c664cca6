"""``vpncloud apply``: make the applied state match the mesh description.

Order matters for safety, so it is fixed here:

1. keys: every node's key is created in the keystore *before* any config is written, and an existing
   key is never replaced (``Keystore.ensure``), so an interrupted apply re-run finds the same keys;
2. configs: rendered with the real keys, written to ``<state_dir>/<mesh>/<node>.net`` (0600);
3. the target deploys them (lab: network namespaces; ansible: not yet);
4. the state file is written after each resource the target finished, so a re-run only redoes the
   rest and converges.

Targets implement :class:`Target`; failures raise :class:`ApplyError` naming the node and the step.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .acl import needs_security_file, security_file, security_file_text
from .fleet import FleetReadError, HostFacts, read_fleet
from .keystore import Keystore
from .models import Mesh
from .plan import (
    Drift,
    Plan,
    Refresh,
    ResourceChange,
    compute_destroy,
    compute_plan,
    compute_rotation,
    desired_resources,
    diff_resources,
    key_view,
    merge_drift,
    requested_replacements,
)
from .render import KeyView, RenderedNode, Unknown, config_text, hosts_block, render_mesh
from .state import MeshState, RotationProgress, decode_attrs, encode_attrs, load_state, save_state

__all__ = [
    "AnsibleTarget",
    "ApplyError",
    "LabTarget",
    "Target",
    "apply_mesh",
    "apply_rotation",
    "destroy_mesh",
    "refresh_target",
    "write_configs",
]

Progress = Callable[[str], None]


class ApplyError(Exception):
    """Apply failed; the message names the node (or mesh) and the step."""


class Target(Protocol):
    """Where configs go, terraform-provider style: ``read`` what is, ``deploy`` (apply) the changes.

    ``deploy`` gets every node's rendering and the changes of this run, including the repairs of
    whatever ``read`` found drifted.
    """

    name: str

    def read(self, mesh: Mesh, state: MeshState, keystore: Keystore) -> Refresh: ...

    def destroy(self, mesh: Mesh, progress: Progress) -> None: ...

    def deploy(self, mesh: Mesh, rendered: dict[str, RenderedNode], changes: list[ResourceChange],
               progress: Progress, rotation: tuple[str, int] | None = None) -> None: ...  # fmt: skip

    def wait_healthy(self, mesh: Mesh, progress: Progress) -> None: ...


def write_configs(
    mesh: Mesh,
    rendered: dict[str, RenderedNode],
    out_dir: Path,
    public_keys: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write every node's config (0600, directory 0700) and the hosts block; returns node -> path."""
    directory = out_dir / mesh.mesh.name
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    paths = {}
    for name, node in rendered.items():
        path = directory / f"{name}.net"
        tmp = directory / f".{name}.net.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(config_text(mesh, node))
        os.replace(tmp, path)
        paths[name] = path
    (directory / "hosts").write_text(hosts_block(mesh), encoding="utf-8")
    if needs_security_file(mesh):
        # Beside each config, where the daemon looks by default (<name>.security.yaml); per node
        # because of the relay section.
        by_name = {n.name: n for n in mesh.nodes}
        for name in rendered:
            content = security_file(mesh, mesh.acl, mesh.key_expiry, public_keys or {}, by_name[name])
            (directory / f"{name}.security.yaml").write_text(security_file_text(content), encoding="utf-8")
    return paths


# --- targets -----------------------------------------------------------------------------------


class AnsibleTarget:
    """Deploy with the Ansible collection in ``ansible/`` (``playbooks/site.yml``).

    The playbook renders each node's config on the controller from the same mesh file and keystore,
    so nothing secret is passed on the command line. Without ``--inventory`` an inventory is written
    to ``<state-dir>/<mesh>/inventory.yml`` from the nodes' ``host`` fields (group ``vpncloud_nodes``).
    The playbook's rolling health check is the health wait.
    """

    name = "ansible"

    def __init__(
        self,
        repo_root: Path | None = None,
        *,
        state_dir: Path | None = None,
        keystore: Path | None = None,
        inventory: Path | list[Path] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.root = repo_root or Path(__file__).resolve().parents[2]
        self.state_dir = state_dir or Path(".vpncloud/state")
        self.keystore = keystore
        self.inventories = [inventory] if isinstance(inventory, Path) else list(inventory or [])
        self.extra_args = list(extra_args or [])
        self.mesh_file: str | None = None
        self.dry_run = any(a in ("--check", "-C") for a in self.extra_args)

    def write_inventory(self, mesh: Mesh) -> Path:
        """An inventory of the mesh's hosts, for when the user gives none."""
        directory = self.state_dir / mesh.mesh.name
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        hosts = {n.host: {"ansible_host": n.host} for n in mesh.nodes}
        lines = ["# Written by vpncloud apply --target ansible from the mesh description.", "all:",
                 "  children:", "    vpncloud_nodes:", "      hosts:"]  # fmt: skip
        for host, attrs in hosts.items():
            lines.append(f"        {json.dumps(host)}:")
            lines.append(f"          ansible_host: {json.dumps(attrs['ansible_host'])}")
        path = directory / "inventory.yml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def command(self, mesh: Mesh, playbook: str = "site.yml") -> tuple[list[str], dict[str, str]]:
        """The ansible-playbook command line and environment (no secrets in either)."""
        collection = self.root / "ansible"
        if not (collection / "galaxy.yml").exists():
            raise ApplyError(
                f"mesh {mesh.mesh.name}: step deploy: no Ansible collection under {collection}; "
                "use --target lab"
            )
        if self.mesh_file is None:
            raise ApplyError(f"mesh {mesh.mesh.name}: step deploy: the ansible target needs the mesh file")
        # A collections path without Galaxy: ansible_collections/vpncloud/mesh -> ansible/
        link_dir = self.state_dir / "ansible_collections" / "vpncloud"
        link_dir.mkdir(parents=True, exist_ok=True)
        link = link_dir / "mesh"
        if not link.exists():
            link.symlink_to(collection.resolve(), target_is_directory=True)
        playbook_bin = Path(sys.executable).with_name("ansible-playbook")
        inventories = self.inventories or [self.write_inventory(mesh)]
        cmd = [
            str(playbook_bin) if playbook_bin.exists() else "ansible-playbook",
            *(arg for inv in inventories for arg in ("-i", str(inv))),
            str(collection / "playbooks" / playbook),
            "-e", f"vpncloud_mesh_file={Path(self.mesh_file).resolve()}",
        ]  # fmt: skip
        if self.keystore is not None:
            cmd += ["-e", f"vpncloud_keystore={self.keystore.resolve()}"]
        cmd += self.extra_args
        # Ours first, then whatever the user's collections path holds (connection plugins, callbacks).
        paths = [str(self.state_dir.resolve()), os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")]
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.pathsep.join(p for p in paths if p))
        return cmd, env

    def deploy(
        self,
        mesh: Mesh,
        rendered: dict[str, RenderedNode],
        changes: list[ResourceChange],
        progress: Progress,
        rotation: tuple[str, int] | None = None,
    ) -> None:
        # A rollout restarts only what changed; a replacement (-replace, or a drifted node) asks the
        # role to restart that node even if its files did not change.
        replace = sorted(c.address.split(".", 1)[1] for c in changes if c.action == "replace" and
                         c.address.startswith("node."))  # fmt: skip
        extra = ["-e", json.dumps({"vpncloud_restart_nodes": replace})] if replace else []
        if rotation is not None:
            # The role renders from the keystore, not from `rendered`: it must be told the phase, or
            # it would deploy the current key in every phase and the rotation would change nothing.
            node, phase = rotation
            extra += ["-e", json.dumps({"vpncloud_rotation_node": node, "vpncloud_rotation_phase": phase})]
        progress(f"mesh {mesh.mesh.name}: running ansible-playbook site.yml (rolling, health-checked)")
        self._playbook(mesh, extra, "ansible-playbook")

    def _playbook(self, mesh: Mesh, extra: list[str], step: str) -> None:
        cmd, env = self.command(mesh)
        try:
            proc = subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ApplyError(f"mesh {mesh.mesh.name}: step {step}: {exc.strerror}") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise ApplyError(f"mesh {mesh.mesh.name}: step {step}: exit status {proc.returncode}\n{tail}")

    def wait_healthy(self, mesh: Mesh, progress: Progress) -> None:
        return None

    def facts(self, mesh: Mesh) -> dict[str, HostFacts]:
        """What every node's host runs, by node name, read by Ansible in check mode (refresh.yml)."""
        cmd, env = self.command(mesh, "refresh.yml")
        try:
            by_host = read_fleet(cmd, env, sorted({n.host for n in mesh.nodes}))
        except FleetReadError as exc:
            raise ApplyError(f"mesh {mesh.mesh.name}: step refresh: {exc}") from None
        return {n.name: by_host[n.host] for n in mesh.nodes}

    def read(self, mesh: Mesh, state: MeshState, keystore: Keystore) -> Refresh:
        """Drift of the applied nodes on their hosts: reachable, config as apply wrote it, unit
        enabled, daemon answering, and on its own key."""
        applied = sorted(a.split(".", 1)[1] for a in state.resources if a.startswith("node."))
        names = {n.name for n in mesh.nodes}
        applied = [n for n in applied if n in names]  # a node removed from the file is a planned delete
        if not applied:
            return Refresh()
        facts = self.facts(mesh)
        written = self.state_dir / mesh.mesh.name
        drift = []
        for name in applied:
            path = written / f"{name}.net"
            expected = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            reason = _host_drift(facts[name], expected, _accepted_keys(mesh, keystore, name))
            if reason:
                drift.append(Drift(address=f"node.{name}", reason=reason, action="replace"))
        return Refresh(drift=drift)

    def destroy(self, mesh: Mesh, progress: Progress) -> None:
        """The roles' own removal (state absent) on every host: instance, config, log, socket, hosts
        block, and the units and venv when no other mesh remains there."""
        progress(f"mesh {mesh.mesh.name}: running ansible-playbook site.yml with vpncloud_state=absent")
        absent = ["-e", "vpncloud_state=absent", "-e", "vpncloud_health_check=false"]
        self._playbook(mesh, absent, "destroy")


class LabTarget:
    """This machine: one network namespace per node through :mod:`vpncloud.lab.lab`."""

    name = "lab"

    def __init__(self, lab_dir: Path | None = None, timeout: float = 60.0) -> None:
        self.lab_dir = lab_dir
        self.timeout = timeout

    @staticmethod
    def _lab() -> Any:
        try:
            from vpncloud.lab import lab
        except ImportError as exc:  # the lab is written by another team member
            raise ApplyError(f"target lab: the lab module is not available ({exc})") from None
        return lab

    def spec(self, mesh: Mesh, rendered: dict[str, RenderedNode]) -> Any:
        """The lab spec: underlay = the smallest network (at most /24) holding every node's underlay."""
        lab = self._lab()
        addresses, subnet = _lab_underlay(mesh)
        configs = {node.name: _revealed(mesh, rendered[node.name]) for node in mesh.nodes}
        public = {name: str(c.get("crypto", {}).get("public-key") or "") for name, c in configs.items()}
        known = {k: v for k, v in public.items() if v}
        wanted = needs_security_file(mesh)
        nodes = []
        for node, address in zip(mesh.nodes, addresses, strict=True):
            entry = {"name": node.name, "address": str(address), "config": configs[node.name]}
            if wanted:
                entry["security"] = security_file(mesh, mesh.acl, mesh.key_expiry, known, node)
            nodes.append(entry)
        try:
            return lab.LabSpec.model_validate(
                {
                    "name": mesh.mesh.name,
                    "underlay": {"subnet": str(subnet)},
                    "nodes": nodes,
                    "hosts": hosts_block(mesh),
                }
            )
        except ValueError as exc:
            # pydantic's message may quote input (configs hold keys): keep only the error kinds.
            errors = getattr(exc, "errors", None)
            detail = (
                "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors(include_input=False)
                )
                if errors
                else "invalid"
            )
            raise ApplyError(f"mesh {mesh.mesh.name}: step lab spec: {detail}") from None

    def read(self, mesh: Mesh, state: MeshState, keystore: Keystore) -> Refresh:
        """Drift of the applied nodes: lab, namespaces, daemons, sockets, devices, configs, keys."""
        applied = sorted(a.split(".", 1)[1] for a in state.resources if a.startswith("node."))
        if not applied:
            return Refresh()
        lab = self._lab()
        try:
            reality = lab.read_lab(mesh.mesh.name, self.lab_dir)
        except lab.LabError as exc:
            raise ApplyError(f"mesh {mesh.mesh.name}: step refresh: {exc}") from None
        whole = f"lab.{mesh.mesh.name}"
        if not reality.up:
            return Refresh(drift=[Drift(address=whole, reason="lab not running", action="create")])
        missing = [n for n in applied if n not in reality.nodes or not reality.nodes[n].namespace_present]
        if not reality.switch_present or missing:
            what = f"namespace of {', '.join(missing)} missing" if missing else "switch namespace missing"
            return Refresh(drift=[Drift(address=whole, reason=what, action="replace")])
        drift = []
        for name in applied:
            reason = _node_drift(reality.nodes[name], _accepted_keys(mesh, keystore, name))
            if reason:
                drift.append(Drift(address=f"node.{name}", reason=reason, action="replace"))
        edited = [n for n in applied if not reality.nodes[n].hosts_matches]
        if edited and f"hosts.{mesh.mesh.name}" in state.resources:
            # Rewriting the hosts files is enough: no daemon reads them.
            reason = f"hosts file of {', '.join(edited)} edited outside vpncloud"
            drift.append(Drift(address=f"hosts.{mesh.mesh.name}", reason=reason, action="update"))
        running = lab.lab_spec(mesh.mesh.name, self.lab_dir).underlay.subnet
        wanted = _lab_underlay(mesh)[1]
        # Nodes cannot move to another bridge LAN one by one: the plan must say the lab is rebuilt.
        rebuild = f"the underlay network changes from {running} to {wanted}" if running != wanted else None
        return Refresh(drift=drift, rebuild=rebuild)

    def destroy(self, mesh: Mesh, progress: Progress) -> None:
        lab = self._lab()
        progress(f"mesh {mesh.mesh.name}: removing the lab")
        try:
            lab.lab_down(mesh.mesh.name, self.lab_dir)
        except lab.LabError as exc:
            raise ApplyError(f"mesh {mesh.mesh.name}: step destroy: {exc}") from None

    def _is_up(self, mesh: Mesh) -> bool:
        lab = self._lab()
        try:
            status = lab.lab_status(mesh.mesh.name, self.lab_dir, ping=False)
        except lab.LabError:
            return False
        return any(n.running for n in status.nodes)

    def deploy(
        self,
        mesh: Mesh,
        rendered: dict[str, RenderedNode],
        changes: list[ResourceChange],
        progress: Progress,
        rotation: tuple[str, int] | None = None,  # the lab runs `rendered`, which holds the phase's keys
    ) -> None:
        lab = self._lab()
        spec = self.spec(mesh, rendered)
        name = mesh.mesh.name
        node_changes = [c for c in changes if c.address.startswith("node.")]
        rebuild = any(c.address.startswith("lab.") for c in changes)
        up = self._is_up(mesh)
        try:
            if up and not rebuild and lab.lab_spec(name, self.lab_dir).underlay != spec.underlay:
                # The bridge LAN itself changes: no node can keep its place on it.
                progress(f"mesh {name}: the underlay network changes to {spec.underlay.subnet}")
                rebuild = True
            # A node an interrupted apply already added to the lab (but did not record) is restarted.
            in_lab = set(lab.lab_spec(name, self.lab_dir).names()) if up and not rebuild else set()
            if not up or rebuild:
                if up or rebuild:
                    progress(f"mesh {name}: rebuilding the lab")
                    lab.lab_down(name, self.lab_dir)
                progress(f"mesh {name}: starting {len(spec.nodes)} nodes in the lab")
                lab.lab_up(spec, self.lab_dir, timeout=self.timeout)
                return
        except lab.LabError as exc:
            raise ApplyError(f"mesh {name}: step lab up: {exc}") from None
        if any(c.address.startswith("security.") for c in changes):
            # ACL or key expiry changed: every node re-reads its security file on SIGHUP.
            changed = {c.address.split(".", 1)[1] for c in node_changes}
            node_changes = node_changes + [
                ResourceChange(address=f"node.{n.name}", action="update", attributes=[])
                for n in mesh.nodes
                if n.name not in changed
            ]
        # Removed nodes go first, new ones next, then reloads (so the others learn the new peers)
        # and restarts last, since a restart waits for the whole mesh.
        order = {"delete": 0, "create": 1, "update": 2, "replace": 3}
        for change in sorted(node_changes, key=lambda c: order[c.action]):
            node = change.address.split(".", 1)[1]
            step = {"delete": "remove", "create": "add", "update": "reload", "replace": "restart"}[
                change.action
            ]
            progress(f"node {node}: {step}")
            try:
                if change.action == "delete":
                    lab.remove_node(name, node, self.lab_dir)
                elif change.action == "create" and node not in in_lab:
                    lab.add_node(name, spec.node(node), self.lab_dir, hosts=spec.hosts)
                elif change.action == "update":
                    lab.reload_node(name, spec.node(node), self.lab_dir)
                else:
                    lab.restart_node(name, spec.node(node), self.lab_dir, timeout=self.timeout)
            except lab.LabError as exc:
                raise ApplyError(f"node {node}: step {step}: {exc}") from None
        if any(c.address.startswith("hosts.") and c.action != "create" for c in changes):
            try:
                lab.set_hosts(name, spec.hosts or "", self.lab_dir)
            except lab.LabError as exc:
                raise ApplyError(f"mesh {name}: step hosts: {exc}") from None

    def wait_healthy(self, mesh: Mesh, progress: Progress) -> None:
        """Poll the lab until every node sees every other and all pings answer (bounded)."""
        lab = self._lab()
        deadline = time.monotonic() + self.timeout
        progress(f"mesh {mesh.mesh.name}: waiting for the mesh to be healthy")
        while True:
            try:
                status = lab.lab_status(mesh.mesh.name, self.lab_dir, ping=True)
            except lab.LabError as exc:
                raise ApplyError(f"mesh {mesh.mesh.name}: step health check: {exc}") from None
            if status.whole and status.ping_ok:
                return
            if time.monotonic() >= deadline:
                missing = ", ".join(f"{a}->{b}" for a, b in status.missing_links()) or "ping failed"
                raise ApplyError(f"mesh {mesh.mesh.name}: step health check: not healthy ({missing})")
            time.sleep(0.5)  # polling interval of a bounded wait, not a synchronisation sleep


def _lab_underlay(
    mesh: Mesh,
) -> tuple[list[ipaddress.IPv4Address], ipaddress.IPv4Network]:
    """Every node's underlay address and the smallest network (at most /24) holding them all."""
    addresses = []
    for node in mesh.nodes:
        try:
            addresses.append(ipaddress.IPv4Address(node.underlay or ""))
        except ValueError:
            raise ApplyError(
                f"node {node.name}: step lab spec: the lab needs an IPv4 underlay address"
            ) from None
    prefix = 24
    while prefix > 8 and len({ipaddress.ip_network(f"{a}/{prefix}", strict=False) for a in addresses}) > 1:
        prefix -= 1
    return addresses, ipaddress.IPv4Network(f"{addresses[0]}/{prefix}", strict=False)


def _accepted_keys(mesh: Mesh, keystore: Keystore, node: str) -> set[str]:
    # Mid-rotation a node legitimately runs on its next key.
    if mesh.mesh.auth != "keys":
        return set()
    pairs = (keystore.get(mesh.mesh.name, node), keystore.get(mesh.mesh.name, node, next_key=True))
    return {p.public_key for p in pairs if p is not None}


def _host_drift(facts: HostFacts, expected_sha256: str | None, keys: set[str]) -> str | None:
    """Why a fleet node's host differs from what apply left (every reason found), or None."""
    if not facts.reachable:
        return f"host {facts.host} {facts.error or 'unreachable'}"
    reasons = []
    if not facts.config_exists:
        reasons.append("config missing on the host")
    elif expected_sha256 is not None and facts.config_sha256 != expected_sha256:
        reasons.append("config edited on the host")
    if facts.unit_managed and facts.unit_file_state not in ("enabled", "static"):
        reasons.append(f"unit {facts.unit_file_state or 'missing'}")
    if facts.status is None:
        reasons.append("daemon not running")
    elif keys and facts.status.get("public_key") not in keys:
        reasons.append("uses a key that is not its key in the keystore")
    return "; ".join(reasons) or None


def _node_drift(node: Any, keys: set[str]) -> str | None:
    """Why a lab node differs from what apply left, or None."""
    if not node.running:
        return "daemon not running"
    if not node.socket_answers:
        return "control socket not answering"
    if node.device and not node.device_present:
        return f"device {node.device} missing"
    if not node.config_matches:
        return "config edited outside vpncloud"
    if keys and node.public_key not in keys:
        return "uses a key that is not its key in the keystore"
    return None


def _revealed(mesh: Mesh, rendered: RenderedNode) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(config_text(mesh, rendered))
    assert isinstance(data, dict)
    return data


# --- apply -------------------------------------------------------------------------------------


def _requested_drift(plan: Plan) -> list[Drift]:
    return [
        Drift(address=f"node.{n}", reason="replacement requested", action="replace") for n in plan.replace
    ]


def _remove_rendered(state_dir: Path, mesh: str, nodes: list[str]) -> None:
    for node in nodes:
        for suffix in (".net", ".security.yaml"):
            (state_dir / mesh / f"{node}{suffix}").unlink(missing_ok=True)


def _archive_keys(keystore: Keystore, mesh: str, plan: Plan, progress: Progress) -> None:
    for item in plan.key_archives:
        path = keystore.archive(mesh, item.file)
        progress(f"{item.reason}: archived to {path}")


def destroy_mesh(
    mesh: Mesh,
    keystore: Keystore,
    state_dir: Path,
    target: Target,
    *,
    progress: Progress = lambda _msg: None,
) -> Plan:
    """Remove everything the mesh made on its target and the rendered files; archive every key."""
    state = load_state(state_dir, mesh.mesh.name)
    plan = compute_destroy(mesh, keystore, state, target=target.name)
    target.destroy(mesh, progress)
    directory = state_dir / mesh.mesh.name
    if directory.is_dir():
        progress(f"mesh {mesh.mesh.name}: removing the rendered configs in {directory}")
        shutil.rmtree(directory)
    _archive_keys(keystore, mesh.mesh.name, plan, progress)
    save_state(state_dir, state.model_copy(update={"resources": {}, "rotation": None}))
    progress(f"mesh {mesh.mesh.name}: destroyed")
    return plan


def refresh_target(target: Any, mesh: Mesh, state: MeshState, keystore: Keystore) -> Refresh:
    """What ``target`` reads as drift; targets without ``read`` say that they cannot."""
    read = getattr(target, "read", None)
    if read is None:
        return Refresh(skipped=f"the {getattr(target, 'name', '?')} target cannot read reality")
    result = read(mesh, state, keystore)
    assert isinstance(result, Refresh)
    return result


def _record(state: MeshState, desired: dict[str, dict[str, Any]], changes: list[ResourceChange]) -> MeshState:
    resources = dict(state.resources)
    for change in changes:
        if change.address not in desired and change.action != "delete":
            continue  # the lab as a whole is not an applied resource
        if change.action == "delete":
            resources.pop(change.address, None)
        else:
            resources[change.address] = encode_attrs(desired[change.address])
    return state.model_copy(update={"resources": resources})


def _public_keys(keys: KeyView) -> dict[str, str]:
    return {name: key for name, key in keys.public.items() if isinstance(key, str)}


def _announce_new_keys(keys: KeyView, progress: Progress) -> None:
    for name in [n for n, k in keys.private.items() if isinstance(k, Unknown)]:
        progress(f"node {name}: generating key")


def apply_mesh(
    mesh: Mesh,
    keystore: Keystore,
    state_dir: Path,
    target: Target,
    *,
    expected_hash: str | None = None,
    progress: Progress = lambda _msg: None,
    mesh_file: str | None = None,
    refresh: bool | Refresh = True,
    replace: list[str] | None = None,
) -> Plan:
    """Apply the mesh; with ``expected_hash`` (a saved plan) refuse if the inputs changed since.

    With ``refresh`` the target is read first and drifted resources are repaired too. Returns the
    plan that was applied.
    """
    state = load_state(state_dir, mesh.mesh.name)
    if isinstance(refresh, Refresh):
        found: Refresh | None = refresh  # already read (and shown) by the caller
    else:
        found = refresh_target(target, mesh, state, keystore) if refresh else None
    plan = compute_plan(mesh, keystore, state, mesh_file=mesh_file, refresh=found, replace=replace)
    if expected_hash is not None and plan.inputs_hash != expected_hash:
        raise ApplyError(
            f"mesh {mesh.mesh.name}: step check plan: the saved plan is stale (the mesh, the keys or the "
            "applied state changed since it was made); run plan again"
        )
    if not plan.has_changes:
        progress(f"mesh {mesh.mesh.name}: no changes")
        return plan
    # 1. keys first, so configs never reference a key that is not safely stored.
    _announce_new_keys(key_view(mesh, keystore), progress)
    try:
        keys = key_view(mesh, keystore, generate=True)
    except OSError as exc:
        raise ApplyError(f"mesh {mesh.mesh.name}: step keys: {exc.strerror}") from None
    rendered = render_mesh(mesh, keys)
    desired = desired_resources(mesh, keys)
    # 2. recompute the changes with the real keys (public keys are now known).
    before = {a: decode_attrs(v) for a, v in state.resources.items()}
    requested = requested_replacements(mesh, plan.replace)
    changes = merge_drift(merge_drift(diff_resources(before, desired), plan.drift), requested)
    # Target-level changes (the lab as a whole) come from the refresh, not from the resources.
    changes = [c for c in plan.changes if c.address.startswith("lab.")] + [
        c for c in changes if not c.address.startswith("lab.")
    ]
    write_configs(mesh, rendered, state_dir, _public_keys(keys))
    # 3. deploy, 4. record.
    if changes:
        target.deploy(mesh, rendered, changes, progress)
        target.wait_healthy(mesh, progress)
    _remove_rendered(
        state_dir,
        mesh.mesh.name,
        [
            c.address.split(".", 1)[1]
            for c in changes
            if c.address.startswith("node.") and c.action == "delete"
        ],
    )
    # Keys of removed nodes only after the nodes are gone: until then they still use them.
    _archive_keys(keystore, mesh.mesh.name, plan, progress)
    if getattr(target, "dry_run", False):
        # A check-mode deployment changed nothing: recording it would hide the changes from plan.
        progress(f"mesh {mesh.mesh.name}: check mode, applied state not recorded")
        return plan
    lab_dir = getattr(target, "lab_dir", None)
    recorded = {"target": target.name, "lab_dir": str(lab_dir.resolve()) if lab_dir else None}
    save_state(state_dir, _record(state, desired, changes).model_copy(update=recorded))
    progress(f"mesh {mesh.mesh.name}: applied")
    return plan


def apply_rotation(
    mesh: Mesh,
    keystore: Keystore,
    state_dir: Path,
    target: Target,
    node: str,
    *,
    progress: Progress = lambda _msg: None,
) -> None:
    """Run the three rotation phases, waiting for health between them; resumable after a failure."""
    state = load_state(state_dir, mesh.mesh.name)
    compute_rotation(mesh, keystore, state, node)  # validates preconditions
    if state.rotation is None:
        keystore.ensure(mesh.mesh.name, node, next_key=True)
        state = save_state(state_dir, state.model_copy(update={"rotation": RotationProgress(node=node)}))
    assert state.rotation is not None
    for phase in range(state.rotation.phase + 1, 4):
        keys = key_view(mesh, keystore, rotating=node, phase=phase, generate=True)
        desired = desired_resources(mesh, keys)
        before = {a: decode_attrs(v) for a, v in state.resources.items()}
        changes = diff_resources(before, desired)
        progress(f"node {node}: rotation phase {phase}")
        rendered = render_mesh(mesh, keys)
        write_configs(mesh, rendered, state_dir, _public_keys(keys))
        target.deploy(mesh, rendered, changes, progress, rotation=(node, phase))
        target.wait_healthy(mesh, progress)
        state = _record(state, desired, changes)
        state = save_state(
            state_dir, state.model_copy(update={"rotation": RotationProgress(node=node, phase=phase)})
        )
    if keystore.get(mesh.mesh.name, node, next_key=True) is not None:  # not yet promoted by a prior run
        keystore.promote(mesh.mesh.name, node)
        retired = f"{node}.retired.key"
        if (keystore.root / mesh.mesh.name / retired).exists():
            progress(f"node {node}: old key archived to {keystore.archive(mesh.mesh.name, retired)}")
    save_state(state_dir, state.model_copy(update={"rotation": None}))
    progress(f"node {node}: key rotated")
