# Copyright: (c) 2026, VpnCloud mesh team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn the mesh description into what one host needs, on the controller.

They call the project's own models and renderer (``vpncloud.mesh``), so a host gets byte for byte
the config that ``vpncloud apply`` renders: one renderer, no second copy in Jinja. The controller
therefore needs the ``vpncloud`` package importable by the Python running ansible-playbook (it is:
the controller builds the wheelhouse from the same project).

Error messages never quote input values: the mesh may hold passwords.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: mesh
short_description: Render VpnCloud node configs and facts from the mesh description
description:
  - C(node_name), C(node_config), C(security_file), C(restart_fingerprint), C(expected_peers),
    C(wsproxy), C(beacon_files), C(hosts_block) and C(peer_count) filters; see ansible/README.md.
author: VpnCloud mesh team (!UNKNOWN)
"""


def _vpncloud() -> Any:
    try:
        from vpncloud.mesh import keystore, models, plan, render
    except ImportError as exc:  # pragma: no cover - depends on the controller
        raise AnsibleFilterError(
            f"the vpncloud package is not importable on the controller ({exc}); "
            "run ansible-playbook from the project's virtualenv"
        ) from None
    return models, render, plan, keystore


def _plain(value: Any) -> Any:
    """Ansible's (tagged, lazy) containers as plain Python data, which pydantic expects."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def _mesh(data: Any) -> Any:
    models = _vpncloud()[0]
    from pydantic import ValidationError

    try:
        mesh = models.MeshFile.model_validate(_plain(data))
    except ValidationError as exc:
        raise AnsibleFilterError(f"vpncloud_mesh is invalid: {_detail(exc)}") from None
    problems = models.check_mesh(mesh)
    if problems:
        detail = "; ".join(f"{'.'.join(str(p) for p in pr.loc)}: {pr.message}" for pr in problems)
        raise AnsibleFilterError(f"vpncloud_mesh is invalid: {detail}")
    return mesh


def _detail(exc: Any) -> str:
    """A pydantic error in one line, with locations and without the input values."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
    )


def _with_guard(node: Any, handshake_guard: Any) -> Any:
    """``node`` with the role's vpncloud_handshake_guard over its own handshake_guard, key by key."""
    models = _vpncloud()[0]
    from pydantic import ValidationError

    try:
        extra = models.HandshakeGuard.model_validate(_plain(handshake_guard))
    except ValidationError as exc:
        raise AnsibleFilterError(f"vpncloud_handshake_guard is invalid: {_detail(exc)}") from None
    own = node.overrides.handshake_guard
    merged = {**(own.model_dump(exclude_none=True) if own else {}), **extra.model_dump(exclude_none=True)}
    overrides = node.overrides.model_copy(update={"handshake_guard": models.HandshakeGuard(**merged)})
    return node.model_copy(update={"overrides": overrides})


def node_name(data: Any, hostname: str, explicit: str = "") -> str:
    """The node this host runs: ``explicit`` if given, else the node whose ``host`` is ``hostname``."""
    mesh = _mesh(data)
    names = [n.name for n in mesh.nodes]
    if explicit:
        if explicit not in names:
            raise AnsibleFilterError(
                f"vpncloud_node_name {explicit!r} is not a node of mesh {mesh.mesh.name!r}"
            )
        return explicit
    matches = [n.name for n in mesh.nodes if n.host == hostname]
    if not matches:
        raise AnsibleFilterError(
            f"no node of mesh {mesh.mesh.name!r} has host {hostname!r}; set vpncloud_node_name"
        )
    return str(matches[0])


KNOWN_AFTER_APPLY = "(known after apply)"


def node_config(
    data: Any,
    node: str,
    keystore: str,
    rotation_node: str = "",
    rotation_phase: int = 0,
    check_mode: bool = False,
    metrics_listen: str = "",
    handshake_guard: Any = None,
) -> str:
    """The node's config file text, secrets included: write it 0600 with no_log, never print it.

    Only ``node``'s own private key is read from the keystore (public keys of the others). In check
    mode, keys the run would create first are shown as "(known after apply)" instead of failing.
    ``metrics_listen`` (the role's vpncloud_metrics_listen) overrides the mesh's metrics_listen,
    ``handshake_guard`` (vpncloud_handshake_guard) the node's handshake_guard limits key by key.
    """
    _models, render, plan, keystore_mod = _vpncloud()
    mesh = _mesh(data)
    if mesh.mesh.auth == "keys" and not keystore:
        raise AnsibleFilterError("vpncloud_keystore is required for a mesh with auth: keys")
    store = keystore_mod.Keystore(keystore or "/nonexistent")
    try:
        keys = plan.key_view(mesh, store, rotating=rotation_node or None, phase=int(rotation_phase))
    except keystore_mod.KeystoreError as exc:
        raise AnsibleFilterError(f"keystore: {exc}") from None
    # Other nodes' private keys never leave the keystore object: drop them before rendering.
    private = {name: (key if name == node else None) for name, key in keys.private.items()}
    public, trusted = dict(keys.public), list(keys.trusted)
    if check_mode:
        from pydantic import SecretStr

        def known(value: Any) -> bool:
            return isinstance(value, str | SecretStr) or value is None

        private = {k: v if known(v) else SecretStr(KNOWN_AFTER_APPLY) for k, v in private.items()}
        public = {k: v if known(v) else KNOWN_AFTER_APPLY for k, v in public.items()}
        trusted = [v if known(v) else KNOWN_AFTER_APPLY for v in trusted]
    keys = render.KeyView(private, public, trusted)
    target = next((n for n in mesh.nodes if n.name == node), None)
    if target is None:
        raise AnsibleFilterError(f"{node!r} is not a node of mesh {mesh.mesh.name!r}")
    if handshake_guard:
        target = _with_guard(target, handshake_guard)
    rendered = render.render_node(mesh, target, keys)
    if metrics_listen:
        rendered.config["metrics-listen"] = str(metrics_listen)
    try:
        return str(render.config_text(mesh, rendered))
    except ValueError:
        raise AnsibleFilterError(
            f"node {node}: a key is missing in the keystore {keystore} (run `vpncloud apply` or "
            "`vpncloud rotate` first, which generate keys)"
        ) from None


def security_file(data: Any, node: str, keystore: str = "") -> str:
    """The node's security file text (ACL, key expiry, its relay section), as ``vpncloud apply``
    writes it beside the config; '' when the mesh needs none. No secrets: public keys only."""
    _models, _render, plan, keystore_mod = _vpncloud()
    from vpncloud.mesh import acl

    mesh = _mesh(data)
    target = next((n for n in mesh.nodes if n.name == node), None)
    if target is None:
        raise AnsibleFilterError(f"{node!r} is not a node of mesh {mesh.mesh.name!r}")
    if not acl.needs_security_file(mesh):
        return ""
    public: dict[str, str] = {}
    if mesh.mesh.auth == "keys" and keystore:
        try:
            keys = plan.key_view(mesh, keystore_mod.Keystore(keystore))
        except keystore_mod.KeystoreError as exc:
            raise AnsibleFilterError(f"keystore: {exc}") from None
        # keys the run has not created yet are not known: their expiry is left out, as apply does
        public = {name: key for name, key in keys.public.items() if isinstance(key, str)}
    return str(acl.security_file_text(acl.security_file(mesh, mesh.acl, mesh.key_expiry, public, target)))


def restart_fingerprint(text: str, security: str = "") -> dict[str, Any]:
    """What a reload cannot change: device, listen port/address, mode, the node's identity and
    what only runs at start (the interface address, ifup/ifdown hooks, privilege drop, port
    forwarding). A change there needs a restart: a reload would keep the old setup silently.

    Secrets appear only as salted digests, so the result may be compared and logged.
    """
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return {"unparsable": True}
    if not isinstance(config, dict):
        return {"unparsable": True}
    crypto = config.get("crypto") or {}
    secret = f"{crypto.get('private-key')}\0{crypto.get('password')}".encode()
    return {
        "device": config.get("device"),
        "listen": str(config.get("listen")),
        "mode": config.get("mode"),
        "identity": hashlib.sha256(b"vpncloud-ansible\0" + secret).hexdigest()[:16],
        **{key: config.get(key) for key in _START_ONLY},
        # only when set, so that fingerprints of nodes without metrics stay as they were
        **({"metrics-listen": config["metrics-listen"]} if config.get("metrics-listen") else {}),
        # the daemon reads the guard's limits at start only (a reload keeps the running guard)
        **({"handshake-guard": config["handshake-guard"]} if config.get("handshake-guard") else {}),
        # the daemon lowers its TUN MTU for relays only at start; only when on, as above
        **({"relay-use": True} if _relay_use(security) else {}),
    }


def _relay_use(security: str) -> bool:
    try:
        data = yaml.safe_load(security or "") or {}
    except yaml.YAMLError:
        return False
    relay = data.get("relay") if isinstance(data, dict) else None
    return isinstance(relay, dict) and relay.get("use") is True


#: Config keys the daemon only reads at start (see ``Daemon._reload``).
_START_ONLY = ("ip", "ifup", "ifdown", "user", "group", "pid-file", "port-forwarding")


def expected_peers(data: Any, node: str) -> list[str]:
    """Nodes that must end up connected to ``node``: those it connects to and those connecting to it."""
    models = _vpncloud()[0]
    mesh = _mesh(data)
    me = next((n for n in mesh.nodes if n.name == node), None)
    if me is None:
        raise AnsibleFilterError(f"{node!r} is not a node of mesh {mesh.mesh.name!r}")
    result = {p.name for p in models.public_peers(mesh, me)}
    result |= {o.name for o in mesh.nodes if o.name != node and me in models.public_peers(mesh, o)}
    return sorted(result)


def peer_count(status_json: Any) -> int:
    """Connected peers in ``vpncloud status --json`` output (0 when unreadable)."""
    import json

    try:
        status = json.loads(status_json) if isinstance(status_json, str) else status_json
        return len(status.get("peers", []))
    except (ValueError, AttributeError):
        return 0


def wsproxy(data: Any, hostname: str, explicit: str = "") -> dict[str, Any]:
    """The WebSocket proxy this host runs (name, host, port)."""
    mesh = _mesh(data)
    for proxy in mesh.websocket_proxies:
        if (explicit and proxy.name == explicit) or (not explicit and proxy.host == hostname):
            return dict(proxy.model_dump())
    raise AnsibleFilterError(
        f"no websocket proxy of mesh {mesh.mesh.name!r} for {explicit or hostname!r}; "
        "set vpncloud_wsproxy_name"
    )


def beacon_files(data: Any) -> list[str]:
    """Every beacon file path of the mesh (``{mesh}``/``{node}`` expanded; commands excluded)."""
    mesh = _mesh(data)
    beacons = mesh.beacons
    paths: set[str] = set()
    if beacons is None:
        return []
    for template in (beacons.store, beacons.load):
        if not template or template.startswith("|"):
            continue
        for node in mesh.nodes:
            paths.add(template.replace("{mesh}", mesh.mesh.name).replace("{node}", node.name))
    return sorted(paths)


def hosts_block(data: Any) -> dict[str, str]:
    """The mesh's hosts-file block as ``blockinfile`` takes it: marker lines (without the leading
    ``# ``) and the entries between them, line for line what ``vpncloud apply`` writes."""
    render = _vpncloud()[1]
    lines = render.hosts_block(_mesh(data)).splitlines()
    return {
        "begin": lines[0].removeprefix("# "),
        "end": lines[-1].removeprefix("# "),
        "block": "\n".join(lines[1:-1]),
    }


class FilterModule:
    """The collection's filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "node_name": node_name,
            "node_config": node_config,
            "security_file": security_file,
            "restart_fingerprint": restart_fingerprint,
            "expected_peers": expected_peers,
            "peer_count": peer_count,
            "wsproxy": wsproxy,
            "beacon_files": beacon_files,
            "hosts_block": hosts_block,
        }
