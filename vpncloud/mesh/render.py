"""Render each node's config in the original VpnCloud 2.4 format (spec 14.2), its unit and hosts block.

The rendered mapping has exactly the version-2 keys, kebab-case, unset ones as null (like the
original's ``migrate-config``), so the same file drives the original binary and our daemon.

Secrets stay :class:`SecretStr` inside the rendered mapping and are revealed only by
:func:`config_text`, which produces the file content. Values that cannot be known before apply (a key
that is not generated yet) are :data:`UNKNOWN`. :func:`flatten` turns a rendered config into the
dotted attributes the plan diffs, with secrets replaced by :class:`Sensitive` digests.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from vpncloud.core.guard import GuardConfig

from .models import HandshakeGuard, Mesh, Node, NodeOverrides, effective_settings, node_port, public_peers

__all__ = [
    "UNKNOWN",
    "KeyView",
    "RenderedNode",
    "Sensitive",
    "Unknown",
    "config_path",
    "config_text",
    "flatten",
    "guard_section",
    "hosts_block",
    "render_mesh",
    "render_node",
    "replace_hosts_block",
    "unit_name",
]


@dataclass(frozen=True)
class Unknown:
    """Marker: the value is only known after apply (e.g. a key not generated yet).

    A ``label`` names one particular future value (``"next public key of b"``) so that the phases of a
    rotation see the same unknown key as unchanged; the anonymous :data:`UNKNOWN` never equals a known
    value, so it always shows as a change.
    """

    label: str = ""

    def __repr__(self) -> str:
        return "(known after apply)"


UNKNOWN = Unknown()


@dataclass(frozen=True)
class Sensitive:
    """A secret as the plan and the state see it: only a digest, so changes show without the value."""

    digest: str

    @classmethod
    def of(cls, secret: SecretStr, *, low_entropy: bool = True) -> Sensitive:
        """Digest of a secret. Passwords (``low_entropy``) get scrypt so a leaked state file cannot be
        used to test guesses cheaply; random 32-byte keys only need SHA-256."""
        return cls(_digest(secret.get_secret_value(), low_entropy))


@functools.lru_cache(maxsize=64)
def _digest(value: str, low_entropy: bool) -> str:
    data = value.encode()
    salt = b"vpncloud-mesh-state"
    if low_entropy:
        return hashlib.scrypt(data, salt=salt, n=2**14, r=8, p=1, dklen=16).hex()
    return hashlib.sha256(salt + b"\0" + data).hexdigest()[:32]


@dataclass(frozen=True)
class KeyView:
    """Which keys the configs use: every node's key pair and the list everybody trusts.

    ``private``/``public`` map a node to its secret seed and base62 public key (UNKNOWN when not yet
    generated). ``trusted`` is the ordered list every node trusts; during a rotation it holds the old
    and the new key of the rotating node.
    """

    private: dict[str, SecretStr | Unknown]
    public: dict[str, str | Unknown]
    trusted: list[str | Unknown]


@dataclass
class RenderedNode:
    """Everything deployed for one node."""

    node: str
    host: str
    unit: str
    config_path: str
    config: dict[str, Any] = field(default_factory=dict)


def unit_name(mesh: Mesh) -> str:
    """The systemd instance of a mesh: ``vpncloud@<mesh>.service`` (spec 14.8)."""
    return f"vpncloud@{mesh.mesh.name}.service"


def config_path(mesh: Mesh) -> str:
    """Where the config lives on the host."""
    return f"/etc/vpncloud/{mesh.mesh.name}.net"


def _expand(template: str | None, mesh: Mesh, node: Node) -> str | None:
    if template is None:
        return None
    return template.replace("{mesh}", mesh.mesh.name).replace("{node}", node.name)


def _host_port(host: str, port: int) -> str:
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass  # a DNS name
    return f"{host}:{port}"


def render_node(mesh: Mesh, node: Node, keys: KeyView) -> RenderedNode:
    """The node's config mapping (original key order of the shipped example, spec 14.7)."""
    s = effective_settings(mesh, node)
    o: NodeOverrides = node.overrides
    timers = mesh.mesh.timers
    port = node_port(mesh, node)
    if node.websocket_proxy:
        proxy = next(p for p in mesh.websocket_proxies if p.name == node.websocket_proxy)
        listen = f"ws://{_host_port(proxy.host, proxy.port)}"
    else:
        listen = str(port)
    if mesh.mesh.auth == "password":
        assert mesh.mesh.password is not None
        crypto: dict[str, Any] = {
            "password": mesh.mesh.password,
            "private-key": None,
            "public-key": None,
            "trusted-keys": [],  # empty = trust the own (password-derived) key, shared by all
        }
    else:
        crypto = {
            "password": None,
            "private-key": keys.private[node.name],
            "public-key": keys.public[node.name],
            "trusted-keys": list(keys.trusted),
        }
    crypto["algorithms"] = list(o.algorithms or mesh.mesh.algorithms)
    beacons = mesh.beacons
    config: dict[str, Any] = {
        "listen": listen,
        "peers": [_host_port(p.underlay, node_port(mesh, p)) for p in public_peers(mesh, node) if p.underlay],
        "crypto": crypto,
        "ip": f"{node.vpn_address}/{mesh.mesh.vpn_network.prefixlen}",
        "advertise-addresses": list(node.advertise) + [str(a) for a in node.lan],
        "auto-claim": True if s.auto_claim is None else s.auto_claim,
        "claims": [str(c) for c in node.claims],
        "ifup": s.ifup,
        "ifdown": s.ifdown,
        "device": {
            "type": mesh.mesh.device_type,
            "name": s.device_name or "vpncloud%d",
            "path": s.device_path,
            "fix-rp-filter": bool(s.fix_rp_filter),
        },
        "mode": mesh.mesh.mode,
        # The mesh lists every reachable address itself; UPnP is opt-in.
        "port-forwarding": bool(s.port_forwarding),
        "switch-timeout": o.switch_timeout or timers.switch_timeout,
        "peer-timeout": o.peer_timeout or timers.peer_timeout,
        "keepalive": o.keepalive or timers.keepalive,
        "beacon": {
            "store": _expand(beacons.store, mesh, node) if beacons else None,
            "load": _expand(beacons.load, mesh, node) if beacons else None,
            "interval": beacons.interval if beacons else 3600,
            "password": beacons.password if beacons else None,
        },
        "statsd": {"server": s.statsd_server, "prefix": s.statsd_prefix},
        "pid-file": None,
        "stats-file": _expand(s.stats_file, mesh, node),
        "user": s.user,
        "group": s.group,
        "hook": s.hook,
        "hooks": dict(s.hooks or {}),
    }
    if s.metrics_listen:
        # only when set: configs of meshes without metrics stay as they were
        config["metrics-listen"] = s.metrics_listen
    guard = guard_section(s.handshake_guard)
    if guard:
        config["handshake-guard"] = guard
    return RenderedNode(node.name, node.host, unit_name(mesh), config_path(mesh), config)


def guard_section(guard: HandshakeGuard | None) -> dict[str, Any]:
    """The ``handshake-guard`` section: only the limits that differ from the daemon's defaults, so
    that a mesh without them (or restating a default) renders, plans and restarts exactly as before."""
    if guard is None:
        return {}
    defaults = GuardConfig()
    return {
        name.replace("_", "-"): value
        for name, value in guard.model_dump(exclude_none=True).items()
        if value != getattr(defaults, name)
    }


def render_mesh(mesh: Mesh, keys: KeyView) -> dict[str, RenderedNode]:
    """Every node's rendering, by node name."""
    return {node.name: render_node(mesh, node, keys) for node in mesh.nodes}


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Unknown):
        raise ValueError("cannot write a config with values only known after apply")
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def _printable(char: str) -> bool:
    # YAML's printable set (what PyYAML's reader accepts), minus the characters we always escape.
    code = ord(char)
    return (
        0x20 <= code <= 0x7E
        or code == 0x85
        or 0xA0 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    ) and char not in '"\\'


def _quote(text: str) -> str:
    """A YAML double-quoted scalar: always a string, any content (passwords, commands) safe."""
    out = ['"']
    for char in text:
        code = ord(char)
        if _printable(char):
            out.append(char)
        elif char in '"\\':
            out.append("\\" + char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # as PyYAML writes it: YAML 1.1 reads "1e-05" as a string, "1.0e-05" as a float
        text = repr(value).lower()
        return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text
    return _quote(str(value))


def _emit(data: dict[str, Any], indent: str = "") -> list[str]:
    # The config has a fixed, shallow shape (scalars, lists of strings, small mappings), so a direct
    # emitter is enough; it is ~100x faster than PyYAML's representer for 1,000-node trust lists.
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            if value:
                lines.append(f"{indent}{_quote(key) if not key.replace('-', '').isalnum() else key}:")
                lines.extend(_emit(value, indent + "  "))
            else:
                lines.append(f"{indent}{key}: {{}}")
        elif isinstance(value, list):
            if value:
                lines.append(f"{indent}{key}:")
                lines.extend(f"{indent}  - {_scalar(item)}" for item in value)
            else:
                lines.append(f"{indent}{key}: []")
        else:
            name = key if key.replace("-", "").replace("_", "").isalnum() else _quote(key)
            lines.append(f"{indent}{name}: {_scalar(value)}")
    return lines


def config_text(mesh: Mesh, rendered: RenderedNode) -> str:
    """The config file content (YAML), secrets included: write it with mode 0600, never log it."""
    header = (
        f"# VpnCloud config of node {rendered.node!r} in mesh {mesh.mesh.name!r}.\n"
        "# Managed by `vpncloud apply`: local changes are overwritten.\n"
    )
    return header + "\n".join(_emit(_reveal(rendered.config))) + "\n"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted attributes of a rendered config; secrets become :class:`Sensitive`, lists stay lists."""
    result: dict[str, Any] = {}
    if isinstance(value, dict) and (value or not prefix):
        for key, item in value.items():
            result.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return result
    if isinstance(value, SecretStr):
        result[prefix] = Sensitive.of(value, low_entropy=not prefix.endswith("private-key"))
    elif isinstance(value, list):
        result[prefix] = [Sensitive.of(v) if isinstance(v, SecretStr) else v for v in value]
    else:
        result[prefix] = value
    return result


_BEGIN = "# BEGIN vpncloud mesh {name} (managed by vpncloud apply, do not edit)"
_END = "# END vpncloud mesh {name}"


def hosts_block(mesh: Mesh) -> str:
    """An /etc/hosts block naming every node inside the mesh: ``<vpn address> <node>.<mesh>``."""
    name = mesh.mesh.name
    lines = [_BEGIN.format(name=name)]
    for node in sorted(mesh.nodes, key=lambda n: n.vpn_address):
        lines.append(f"{node.vpn_address} {node.name}.{name}")
    lines.append(_END.format(name=name))
    return "\n".join(lines) + "\n"


def replace_hosts_block(existing: str, mesh_name: str, block: str | None) -> str:
    """``existing`` (an /etc/hosts text) with this mesh's block replaced, appended or removed (None)."""
    begin = _BEGIN.format(name=mesh_name)
    end = _END.format(name=mesh_name)
    out: list[str] = []
    inside = False
    for line in existing.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        if stripped == begin:
            inside = True
            continue
        if inside and stripped == end:
            inside = False
            continue
        if not inside:
            out.append(line)
    text = "".join(out)
    if block:
        if text and not text.endswith("\n"):
            text += "\n"
        text += block
    return text
