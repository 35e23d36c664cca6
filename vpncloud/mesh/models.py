"""The mesh description: pydantic models of ``mesh.yaml``.

One file describes one mesh (one VpnCloud network, instance ``vpncloud@<mesh>`` with its config in
``/etc/vpncloud/<mesh>.net``); a host may take part in several meshes, each with its own file.

Every model forbids unknown keys (a typo is an error with its location) and documents every field:
the descriptions become ``schemas/mesh.schema.json``, which editors use for completion. Secrets are
``SecretStr`` so they are masked in ``repr``, dumps, plans and logs.

Single-field rules live in the models; rules that relate several fields or nodes live in
:func:`check_mesh` (ACL rules and tests in :func:`vpncloud.mesh.acl.check_security`), which return
problems with a location (``loc``) so the loader can point at the YAML line of the offending field.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    create_model,
    field_validator,
    model_validator,
)

from vpncloud.core.guard import GUARD_AT_LEAST_ONE, GUARD_DOC, GuardConfig
from vpncloud.sourcefile import host_port_problem, host_problem

__all__ = [
    "AclRuleSpec",
    "AclSpec",
    "Beacons",
    "HandshakeGuard",
    "Mesh",
    "MeshFile",
    "MeshSettings",
    "Node",
    "NodeOverrides",
    "NodeSettings",
    "Problem",
    "Timers",
    "WebSocketProxy",
    "check_mesh",
    "may_relay",
    "relay_only_pair",
    "relay_settings",
    "relayed_at_once",
    "relays_for",
    "uses_relays",
]

Name = Annotated[
    str,
    Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$", description="lower-case letters, digits and '-'"),
]
Algorithm = Literal["plain", "aes128", "aes256", "chacha20"]
HookEvent = Literal[
    "device_setup",
    "device_configured",
    "vpn_started",
    "vpn_shutdown",
    "peer_connecting",
    "peer_connected",
    "peer_disconnected",
]
_DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("aes128", "aes256", "chacha20")
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(ge=1, le=4294967295)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _valid_host(value: str) -> str:
    problem = host_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Host = Annotated[str, AfterValidator(_valid_host)]


class Timers(_Model):
    """Protocol timers (seconds), as in the original's config."""

    peer_timeout: Seconds = Field(
        default=300, description="Drop silent peers after this time (peer-timeout)."
    )
    keepalive: Seconds | None = Field(
        default=None,
        description="Upper bound of the NODE_INFO interval (keepalive); unset = peer_timeout/2-60.",
    )
    switch_timeout: Seconds = Field(
        default=300, description="Lifetime of learned addresses (switch-timeout)."
    )


def _guard_model() -> Any:
    """``handshake_guard``: derived from :class:`~vpncloud.core.guard.GuardConfig`, so the keys, their
    defaults and limits are the daemon's and a limit added there appears here (and in the schema)."""
    defaults = GuardConfig()
    kinds = {"float": float, "int": int, "bool": bool}
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(GuardConfig):
        kind = kinds[str(f.type)]
        limits: dict[str, Any] = {}
        if kind is not bool:
            limits = {"ge": 1} if f.name in GUARD_AT_LEAST_ONE else {"gt": 0}
        if kind is float:
            limits["allow_inf_nan"] = False
        default = getattr(defaults, f.name)
        text = GUARD_DOC[f.name] + f" Default {str(default).lower() if kind is bool else default}."
        # strict: "10" or "yes" is a mistake in a limit, as the daemon's strict reader says too
        fields[f.name] = (kind | None, Field(default=None, strict=True, description=text, **limits))

    def _the_daemon_accepts(self: Any) -> Any:
        # the daemon's own check, so that whatever it would refuse at start is refused here
        try:
            GuardConfig(**self.model_dump(exclude_none=True))
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self

    return create_model(
        "HandshakeGuard",
        __base__=_Model,
        __doc__="Limits of the handshake flood guard (the daemon's handshake-guard section); unset = "
        "the daemon's default, and a config holds only the limits that differ from it.",
        __validators__={"_the_daemon_accepts": model_validator(mode="after")(_the_daemon_accepts)},  # type: ignore[dict-item]
        **fields,
    )


if TYPE_CHECKING:

    class HandshakeGuard(_Model):
        """The model :func:`_guard_model` builds (fields of GuardConfig, all optional)."""

else:
    HandshakeGuard = _guard_model()


class NodeSettings(_Model):
    """Per-node settings that a mesh sets for all nodes (``defaults``) and a node may override."""

    device_name: str | None = Field(
        default=None, description="Interface name template (device.name); '%d' is replaced by a free index."
    )
    device_path: str | None = Field(default=None, description="TUN/TAP device node (device.path).")
    fix_rp_filter: bool | None = Field(default=None, description="Set rp_filter to 1 (device.fix-rp-filter).")
    port_forwarding: bool | None = Field(default=None, description="Try UPnP port mapping (port-forwarding).")
    auto_claim: bool | None = Field(default=None, description="Claim the interface's own /32 (auto-claim).")
    user: str | None = Field(default=None, description="Drop privileges to this user after setup.")
    group: str | None = Field(default=None, description="Drop privileges to this group after setup.")
    ifup: str | None = Field(default=None, description="Shell command run after the device is created.")
    ifdown: str | None = Field(default=None, description="Shell command run at shutdown.")
    stats_file: str | None = Field(
        default=None, description="Periodic statistics file ({mesh} and {node} expand)."
    )
    statsd_server: str | None = Field(default=None, description="Statsd target host:port.")
    statsd_prefix: str | None = Field(default=None, description="Statsd key prefix.")
    hook: str | None = Field(default=None, description="Shell command run for every event.")
    hooks: dict[HookEvent, str] | None = Field(
        default=None, description="Per-event shell commands (event -> command)."
    )
    metrics_listen: str | None = Field(
        default=None,
        pattern=r"^(\[[0-9A-Fa-f:.]+\]:|[0-9.]*:)?[0-9]{1,5}$",
        description="Serve Prometheus metrics on [ADDR]:PORT (metrics-listen); a port alone or ':PORT' "
        "means 127.0.0.1:PORT. Unset = no metrics endpoint.",
    )
    handshake_guard: HandshakeGuard | None = Field(
        default=None,
        description="Limits of the handshake flood guard (handshake-guard); a node's overrides change "
        "the defaults' key by key. A change restarts the node (the daemon reads them at start).",
    )

    @field_validator("statsd_server")
    @classmethod
    def _statsd_host_port(cls, value: str | None) -> str | None:
        problem = value and host_port_problem(value, port_required=True)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("device_name")
    @classmethod
    def _device_name_fits(cls, value: str | None) -> str | None:
        # Linux interface names have at most 15 bytes; '%d' becomes at least one digit.
        if value is not None and (not value or len(value.replace("%d", "0").encode()) > 15):
            raise ValueError("interface names have 1 to 15 bytes")
        return value


class NodeOverrides(NodeSettings):
    """What one node changes relative to the mesh: settings, port, timers and algorithms."""

    port: Port | None = Field(default=None, description="UDP port of this node (default: the mesh port).")
    peer_timeout: Seconds | None = Field(
        default=None, description="Overrides timers.peer_timeout for this node."
    )
    keepalive: Seconds | None = Field(default=None, description="Overrides timers.keepalive for this node.")
    switch_timeout: Seconds | None = Field(
        default=None, description="Overrides timers.switch_timeout for this node."
    )
    algorithms: list[Algorithm] | None = Field(default=None, description="Overrides the mesh algorithms.")


class MeshSettings(_Model):
    """Mesh-wide settings: what every node's config has in common."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,30}$",
        description="Network name: instance vpncloud@NAME, config /etc/vpncloud/NAME.net.",
    )
    mode: Literal["normal", "hub", "switch", "router"] = Field(
        "normal", description="Forwarding mode of every node (mode)."
    )
    device_type: Literal["tun", "tap"] = Field("tun", description="Interface kind (device.type).")
    algorithms: list[Algorithm] = Field(
        default_factory=lambda: list(_DEFAULT_ALGORITHMS),
        description="Allowed algorithms, in preference order (crypto.algorithms).",
        min_length=1,
    )
    port: Port = Field(default=3210, description="Default UDP port of every node (listen).")
    vpn_network: ipaddress.IPv4Network = Field(
        description="The VPN's IPv4 network; every node's vpn_address lies inside it."
    )
    auth: Literal["keys", "password"] = Field(
        "keys",
        description="'keys': one Ed25519 key per node, all trusted (recommended). "
        "'password': the original's shared password (weak: PBKDF2, 4096 rounds, fixed salt).",
    )
    password: SecretStr | None = Field(default=None, description="Shared password, only with auth: password.")
    timers: Timers = Field(default_factory=Timers, description="Protocol timers.")
    interface_mtu: int = Field(
        default=1500,
        ge=576,
        le=65535,
        description="MTU of the nodes' uplink interfaces; the daemon sets the VPN device MTU to this minus "
        "73 (TUN) or 87 (TAP), as the original does.",
    )
    path_mtu: int | None = Field(
        default=None,
        ge=576,
        le=65535,
        description="Smallest MTU on the underlay paths between nodes (e.g. 1492 over PPPoE, 1420 inside "
        "another tunnel); plan warns when the VPN MTU is above what the path carries.",
    )
    defaults: NodeSettings = Field(default_factory=NodeSettings, description="Settings of every node.")

    @model_validator(mode="after")
    def _password_matches_auth(self) -> MeshSettings:
        if self.auth == "password" and (self.password is None or not self.password.get_secret_value()):
            raise ValueError("auth 'password' needs a non-empty password")
        if self.auth == "keys" and self.password is not None:
            raise ValueError("password is only allowed with auth: password")
        return self


class Node(_Model):
    """One member of the mesh: where it runs, how it is reached, what it routes."""

    name: Name = Field(description="Node name, unique in the mesh; also its name in the hosts block.")
    host: Host = Field(
        min_length=1,
        description="Where the node runs: SSH address / inventory host (lab: the namespace name).",
    )
    underlay: Host | None = Field(
        default=None,
        description="Address other nodes connect to (IP or DNS name); required unless behind_nat.",
    )
    behind_nat: bool = Field(default=False, description="Not reachable from outside; only connects out.")
    advertise: list[str] = Field(
        default_factory=list, description="Extra public addresses to publish (advertise-addresses)."
    )
    lan: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(
        default_factory=list,
        description="LAN addresses, published so nodes on the same LAN connect directly.",
    )
    vpn_address: ipaddress.IPv4Address = Field(description="The node's address inside vpn_network (ip).")
    claims: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list, description="Extra ranges routed to this node (claims)."
    )
    groups: list[Name] = Field(
        default_factory=list,
        description="Groups; a node connects to public nodes sharing a group (no groups = all).",
    )
    websocket_proxy: Name | None = Field(
        default=None, description="Connect through this WebSocket proxy instead of a UDP socket."
    )
    relay: bool | None = Field(
        default=None,
        description="Forward (end-to-end encrypted) traffic between nodes of the mesh that cannot reach "
        "each other directly; unset = yes when the node has a public underlay (not behind_nat).",
    )
    use_relays: bool | None = Field(
        default=None,
        description="Reach nodes it cannot connect to directly through a relay (costs 41 bytes of VPN "
        "MTU); unset = yes when the node and another node are behind NAT and a node it connects to "
        "may relay.",
    )
    symmetric_nat: bool = Field(
        default=False,
        description="Its NAT maps a new port per destination (hole punching fails): it and the NAT "
        "nodes it pairs with go through a relay at once instead of after a failed direct attempt.",
    )
    overrides: NodeOverrides = Field(default_factory=NodeOverrides, description="Per-node settings.")

    @model_validator(mode="after")
    def _reachable_somehow(self) -> Node:
        if not self.behind_nat and not self.underlay:
            raise ValueError("a node not behind_nat needs an underlay address")
        if self.symmetric_nat and not self.behind_nat:
            raise ValueError("symmetric_nat needs behind_nat: true")
        return self

    @field_validator("advertise")
    @classmethod
    def _advertise_form(cls, values: list[str]) -> list[str]:
        for value in values:
            problem = host_port_problem(value, port_required=False)
            if problem:
                raise ValueError(problem)
        return values


class _AclModel(BaseModel):
    # populate_by_name: code builds rules with from_=..., files spell it "from"
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AclRuleSpec(_AclModel):
    """One allow rule: traffic from any ``from`` member to any ``to`` member."""

    from_: list[str] = Field(
        alias="from", min_length=1, description="Sources: group names, node names, '*' or networks."
    )
    to: list[str] = Field(min_length=1, description="Destinations: group names, node names, '*' or networks.")
    proto: Literal["any", "tcp", "udp", "icmp"] = Field("any", description="IP protocol (icmp: v4 and v6).")
    ports: list[int | str] = Field(
        default_factory=list, description="Destination ports or ranges ('8000-8100'); tcp/udp only."
    )
    name: str | None = Field(default=None, description="Shown in errors and the node's status.")


class AclSpec(_AclModel):
    """Allow rules (default deny once present) and policy tests checked by ``vpncloud plan``."""

    rules: list[AclRuleSpec] = Field(default_factory=list, description="Allow rules.")
    tests: list[str] = Field(
        default_factory=list,
        description="Policy tests like 'a -> b:22 allowed', 'c -> b denied', 'a -> b:53/udp allowed'.",
    )
    allow_non_ip: bool = Field(default=True, description="TAP mode: let ARP and other non-IP frames pass.")


class Beacons(_Model):
    """Beacons: publish/find addresses through a file or command (spec 15)."""

    store: str | None = Field(
        default=None, description="File or '|command' to store beacons ({mesh}, {node} expand)."
    )
    load: str | None = Field(
        default=None, description="File or '|command' to load beacons ({mesh}, {node} expand)."
    )
    interval: Seconds = Field(default=3600, description="Store/load period in seconds.")
    password: SecretStr | None = Field(default=None, description="Beacon obfuscation key.")


class WebSocketProxy(_Model):
    """A ``vpncloud ws-proxy`` instance that nodes without UDP can connect through."""

    name: Name = Field(description="Proxy name, referenced by nodes' websocket_proxy.")
    host: Host = Field(min_length=1, description="Host the proxy runs on (and the URL host).")
    port: Port = Field(default=3210, description="TCP port the proxy listens on.")


class MeshFile(_Model):
    """The whole ``mesh.yaml``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"title": "VpnCloud mesh"},
    )

    mesh: MeshSettings = Field(description="Mesh-wide settings.")
    nodes: list[Node] = Field(min_length=1, description="The nodes of the mesh.")
    beacons: Beacons | None = Field(default=None, description="Beacon store/load for every node.")
    websocket_proxies: list[WebSocketProxy] = Field(
        default_factory=list, description="WebSocket proxies (model only; not deployed yet)."
    )
    acl: AclSpec | None = Field(
        default=None,
        description="Allow rules between groups, nodes and networks, with policy tests checked by plan. "
        "Without this section every node allows everything (the original's behaviour).",
    )
    key_expiry: dict[str, dt.date | dt.datetime] = Field(
        default_factory=dict,
        description="Node name -> date (UTC midnight) or date-time from which its key is refused by "
        "every node; plan warns 30 days ahead.",
    )

    _peer_cache: dict[str, list[Node]] | None = PrivateAttr(default=None)
    _relay_users: frozenset[str] | None = PrivateAttr(default=None)
    _relayed_at_once: frozenset[str] | None = PrivateAttr(default=None)


# Kept as an alias: "Mesh" reads better in code that handles a loaded description.
Mesh = MeshFile


@dataclass(frozen=True)
class Problem:
    """A cross-field problem: where (pydantic-style loc) and what."""

    loc: tuple[str | int, ...]
    message: str


def known_names(kind: str, names: list[str], limit: int = 20) -> str:
    """``nodes: a, b, c`` for an 'unknown ...' message; long lists are cut, meshes reach 1,000s of nodes."""
    if not names:
        return f"no {kind}"
    shown = ", ".join(names[:limit])
    return f"{kind}: {shown}" + (f", and {len(names) - limit} more" if len(names) > limit else "")


def unknown_node(mesh: Mesh, name: str) -> str:
    """The message for a node name that the mesh does not have, naming the ones it has."""
    return f"unknown node {name!r} ({known_names('nodes', [n.name for n in mesh.nodes])})"


def node_port(mesh: Mesh, node: Node) -> int:
    """The UDP port a node listens on."""
    return node.overrides.port or mesh.mesh.port


def effective_settings(mesh: Mesh, node: Node) -> NodeSettings:
    """The mesh defaults with the node's overrides applied."""
    merged = mesh.mesh.defaults.model_dump(exclude_none=True)
    own = node.overrides.model_dump(exclude_none=True)
    guard = {**merged.get("handshake_guard", {}), **own.get("handshake_guard", {})}
    merged.update({k: v for k, v in own.items() if k in NodeSettings.model_fields})
    if guard:
        merged["handshake_guard"] = guard  # key by key, as the daemon merges its config sources
    return NodeSettings.model_validate(merged)


def public_peers(mesh: Mesh, node: Node) -> list[Node]:
    """Nodes this node connects to: reachable (not behind NAT) ones sharing a group, if any."""
    cache = mesh._peer_cache
    if cache is None:
        # Computed once per mesh: check, render and warnings all ask, and meshes reach 1,000s of nodes.
        public = [(o, set(o.groups)) for o in mesh.nodes if not o.behind_nat]
        cache = {}
        for n in mesh.nodes:
            own = set(n.groups)
            cache[n.name] = [
                o for o, groups in public if o is not n and (not own or not groups or own & groups)
            ]
        mesh._peer_cache = cache
    return cache[node.name]


def may_relay(node: Node) -> bool:
    """Whether the node may forward for others: explicitly, or by having a public underlay."""
    return node.relay if node.relay is not None else not node.behind_nat


def relays_for(mesh: Mesh, node: Node) -> list[Node]:
    """The relays a node can use: nodes it connects to that may relay (a relay needs a session with
    both ends, and a node has sessions with the public nodes it connects to)."""
    return [p for p in public_peers(mesh, node) if may_relay(p)]


def uses_relays(mesh: Mesh, node: Node) -> bool:
    """Whether the node reaches peers through relays.

    By default only a node behind NAT does, and only when another node is behind NAT too: a public
    node is always reached directly, so it would pay the smaller MTU for nothing.
    """
    users = mesh._relay_users
    if users is None:
        nat = sum(1 for n in mesh.nodes if n.behind_nat)
        users = frozenset(
            n.name
            for n in mesh.nodes
            if (n.use_relays if n.use_relays is not None else n.behind_nat and nat > 1)
            and relays_for(mesh, n)
        )
        mesh._relay_users = users
    return node.name in users


def relay_only_pair(mesh: Mesh, a: Node, b: Node) -> bool:
    """Whether the plan knows the two cannot connect directly: both behind NAT, one of them a
    symmetric NAT (a new port per destination defeats hole punching), and a relay in common."""
    return (
        a is not b
        and a.behind_nat
        and b.behind_nat
        and (a.symmetric_nat or b.symmetric_nat)
        and uses_relays(mesh, a)
        and uses_relays(mesh, b)
        and bool({r.name for r in relays_for(mesh, a)} & {r.name for r in relays_for(mesh, b)})
    )


def relayed_at_once(mesh: Mesh, node: Node) -> bool:
    """Whether the node is an end of a pair that ``relay_only_pair`` knows: it goes through a relay
    without waiting for the direct attempt to time out (the ``at_once`` of its relay section)."""
    known = mesh._relayed_at_once
    if known is None:
        # Per relay, the symmetric-NAT users and all users: linear in the nodes, not in the pairs.
        users = [n for n in mesh.nodes if n.behind_nat and uses_relays(mesh, n)]
        relays = {n.name: {r.name for r in relays_for(mesh, n)} for n in users}
        sym: dict[str, int] = {}
        every: dict[str, int] = {}
        for n in users:
            for r in relays[n.name]:
                every[r] = every.get(r, 0) + 1
                if n.symmetric_nat:
                    sym[r] = sym.get(r, 0) + 1
        known = frozenset(
            n.name
            for n in users
            if any((every[r] > 1 if n.symmetric_nat else sym.get(r, 0) > 0) for r in relays[n.name])
        )
        mesh._relayed_at_once = known
    return node.name in known


def relay_settings(mesh: Mesh, node: Node) -> dict[str, bool] | None:
    """The node's ``relay`` section of its security file (None: relays off, the original's behaviour).

    A node offers only when another node uses relays: without users an offer changes nothing but
    the features it announces.
    """
    use = uses_relays(mesh, node)
    users = mesh._relay_users or frozenset()
    offer = may_relay(node) and bool(users - {node.name})
    if not (use or offer):
        return None
    out = {"offer": offer, "use": use}
    if use and relayed_at_once(mesh, node):
        out["at_once"] = True  # only when on: the files of meshes without symmetric NATs stay as they were
    return out


def check_mesh(mesh: Mesh) -> list[Problem]:
    """Cross-field errors: duplicates, addresses outside the network, overlapping claims, isolation.

    Overlapping claims of *different* lengths are legal (longest prefix wins) and only warned about
    at plan time; identical claims on two nodes are an error because routing would be ambiguous.
    """
    problems: list[Problem] = []
    network = mesh.mesh.vpn_network
    first_name: dict[str, int] = {}
    first_addr: dict[ipaddress.IPv4Address, int] = {}
    first_underlay: dict[tuple[str, int], int] = {}
    host_ports: dict[tuple[str, int], int] = {}
    claim_owner: dict[object, int] = {}
    proxies = {p.name for p in mesh.websocket_proxies}
    for i, node in enumerate(mesh.nodes):
        if node.name in first_name:
            problems.append(
                Problem(
                    ("nodes", i, "name"),
                    f"duplicate node name {node.name!r} (first at nodes[{first_name[node.name]}])",
                )
            )
        first_name.setdefault(node.name, i)
        if node.vpn_address in first_addr:
            problems.append(
                Problem(
                    ("nodes", i, "vpn_address"),
                    f"duplicate vpn_address {node.vpn_address} (also nodes[{first_addr[node.vpn_address]}])",
                )
            )
        first_addr.setdefault(node.vpn_address, i)
        if node.vpn_address not in network:
            problems.append(
                Problem(("nodes", i, "vpn_address"), f"{node.vpn_address} is outside vpn_network {network}")
            )
        elif (
            node.vpn_address in (network.network_address, network.broadcast_address)
            and network.prefixlen < 31
        ):
            problems.append(
                Problem(
                    ("nodes", i, "vpn_address"), f"{node.vpn_address} is the network or broadcast address"
                )
            )
        port = node_port(mesh, node)
        if node.underlay:
            key = (node.underlay, port)
            if key in first_underlay:
                problems.append(
                    Problem(
                        ("nodes", i, "underlay"),
                        f"duplicate underlay address {node.underlay}:{port} "
                        f"(also nodes[{first_underlay[key]}])",
                    )
                )
            first_underlay.setdefault(key, i)
        hp = (node.host, port)
        if hp in host_ports:
            problems.append(
                Problem(
                    ("nodes", i, "host"),
                    f"port {port} is used twice on host {node.host!r} (also nodes[{host_ports[hp]}])",
                )
            )
        host_ports.setdefault(hp, i)
        for j, claim in enumerate(node.claims):
            if claim in claim_owner and claim_owner[claim] != i:
                owner = mesh.nodes[claim_owner[claim]].name
                problems.append(
                    Problem(("nodes", i, "claims", j), f"claim {claim} is also claimed by {owner!r}")
                )
            claim_owner.setdefault(claim, i)
        settings = effective_settings(mesh, node)
        if settings.statsd_prefix is not None and settings.statsd_server is None:
            problems.append(
                Problem(("nodes", i, "overrides", "statsd_prefix"), "statsd_prefix needs statsd_server")
            )
        if node.websocket_proxy and node.websocket_proxy not in proxies:
            problems.append(
                Problem(
                    ("nodes", i, "websocket_proxy"),
                    f"unknown websocket proxy {node.websocket_proxy!r} "
                    f"({known_names('websocket_proxies', sorted(proxies))})",
                )
            )
        reachable = bool(public_peers(mesh, node)) or (
            not node.behind_nat and any(o is not node for o in mesh.nodes)
        )
        if not reachable:
            problems.append(
                Problem(
                    ("nodes", i, "behind_nat" if node.behind_nat else "name"),
                    f"node {node.name!r} has no reachable peer",
                )
            )
    # Several nodes of this mesh on one host would share the instance name vpncloud@<mesh>.
    by_host: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(mesh.nodes):
        by_host[node.host].append(i)
    for indexes in by_host.values():
        for i in indexes[1:]:
            problems.append(
                Problem(
                    ("nodes", i, "host"),
                    f"host {mesh.nodes[i].host!r} already runs this mesh (nodes[{indexes[0]}]); "
                    f"one instance vpncloud@{mesh.mesh.name} per host",
                )
            )
    return problems


def overlapping_claims(mesh: Mesh) -> list[tuple[str, str, str, str]]:
    """Pairs of claims of different nodes that overlap (node, claim, node, claim)."""
    flat = [(n.name, c) for n in mesh.nodes for c in n.claims]
    result = []
    for (na, ca), (nb, cb) in itertools.combinations(flat, 2):
        if na != nb and ca.version == cb.version and ca.overlaps(cb):  # type: ignore[union-attr,arg-type,unused-ignore]
            result.append((na, str(ca), nb, str(cb)))
    return result


def check_meshes(meshes: list[Mesh]) -> list[tuple[int, Problem]]:
    """Problems between several meshes sharing hosts: a port or a mesh name used twice on one host.

    Returns (mesh index, problem) pairs; the problem's loc is inside that mesh's file.
    """
    problems: list[tuple[int, Problem]] = []
    ports: dict[tuple[str, int], str] = {}
    names: dict[str, int] = {}
    for m, mesh in enumerate(meshes):
        if mesh.mesh.name in names:
            problems.append((m, Problem(("mesh", "name"), f"mesh name {mesh.mesh.name!r} is used twice")))
        names.setdefault(mesh.mesh.name, m)
        for i, node in enumerate(mesh.nodes):
            key = (node.host, node_port(mesh, node))
            if key in ports and ports[key] != mesh.mesh.name:
                problems.append(
                    (
                        m,
                        Problem(
                            ("nodes", i, "host"),
                            f"port {key[1]} on host {node.host!r} is also used by mesh {ports[key]!r}",
                        ),
                    )
                )
            ports.setdefault(key, mesh.mesh.name)
    return problems
