"""ACLs, policy tests and key expiry in the mesh description; the per-node security file.

The models (:class:`~vpncloud.mesh.models.AclSpec`) live in ``vpncloud/mesh/models.py`` beside
``MeshFile``; they are two optional top-level keys of ``mesh.yaml``::

    acl:
      rules:
        - {from: [admins], to: [servers], proto: tcp, ports: [22]}
        - {from: ["*"], to: ["*"], proto: icmp}
      tests:
        - "a -> b:22 allowed"
        - "c -> b denied"
    key_expiry:
      c: 2027-01-31          # node name -> date (UTC midnight) or date-time

Rule members are group names (``groups`` of nodes), node names, ``*`` (every node) or literal networks
(``192.168.7.0/24``). A node stands for its ``vpn_address`` and its ``claims``. Everything not allowed is
denied once an ``acl`` section exists; without one, nodes allow everything (the original's behaviour).

Where this goes: :func:`check_security` returns :class:`~vpncloud.mesh.models.Problem` s (unknown
members, malformed tests, *failing* tests) that the loader reports with those of ``check_mesh``;
:func:`expiry_warnings` returns ``(kind, message)`` pairs for plan warnings; :func:`security_file`
renders the per-node file ``/etc/vpncloud/<mesh>.security.yaml`` that the daemon loads with
``vpncloud/daemon/security_file.py`` (the original's config file rejects unknown keys, so this cannot
live in ``<mesh>.net``). The file holds no secrets: networks, ports and public keys with dates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from vpncloud.core.acl import AclPolicy, AclRule, parse_port_range
from vpncloud.core.errors import ConfigError
from vpncloud.sourcefile import host_bits_hint

# models.py owns the ACL's pydantic models (MeshFile.acl needs them), so this module depends on it and
# never the other way round.
from .models import AclRuleSpec, AclSpec, Mesh, Node, Problem, known_names, relay_settings, unknown_node

__all__ = [
    "AclRuleSpec",
    "AclSpec",
    "KeyExpiry",
    "PolicyTest",
    "check_security",
    "compile_policy",
    "expiry_timestamps",
    "expiry_warnings",
    "needs_security_file",
    "parse_test",
    "run_policy_tests",
    "security_file",
    "security_file_text",
]

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
KeyExpiry = dict[str, dt.date | dt.datetime]


# --- members and compilation ----------------------------------------------------------------------


def node_networks(node: Node) -> list[IPNet]:
    """What a node stands for in rules: its VPN address and its claims."""
    nets: list[IPNet] = [ipaddress.ip_network(f"{node.vpn_address}/{node.vpn_address.max_prefixlen}")]
    for claim in node.claims:
        net = ipaddress.ip_network(claim)
        if net not in nets:
            nets.append(net)
    return nets


def _resolve(mesh: Mesh, member: str) -> list[IPNet] | None:
    """Networks of one rule member, or None when the name is unknown."""
    if member == "*":
        return [n for node in mesh.nodes for n in node_networks(node)]
    for node in mesh.nodes:
        if node.name == member:
            return node_networks(node)
    grouped = [node for node in mesh.nodes if member in node.groups]
    if grouped:
        return [n for node in grouped for n in node_networks(node)]
    try:
        return [ipaddress.ip_network(member, strict=False)]
    except ValueError:
        return None


def _members(mesh: Mesh, members: Iterable[str]) -> tuple[IPNet, ...]:
    out: list[IPNet] = []
    for m in members:
        hint = host_bits_hint(m)
        if hint:
            raise ConfigError(hint)
        nets = _resolve(mesh, m)
        if nets is None:
            groups = sorted({g for node in mesh.nodes for g in node.groups})
            raise ConfigError(
                f"unknown group, node or network {m!r} "
                f"({known_names('nodes', [n.name for n in mesh.nodes])}; {known_names('groups', groups)})"
            )
        out.extend(n for n in nets if n not in out)
    return tuple(out)


def compile_policy(mesh: Mesh, acl: AclSpec) -> AclPolicy:
    """The core policy for every node of ``mesh`` (the same on each node). Raises ``ConfigError``."""
    rules = []
    for i, spec in enumerate(acl.rules):
        label = spec.name or f"rule {i + 1}"
        try:
            rules.append(
                AclRule(
                    src=_members(mesh, spec.from_),
                    dst=_members(mesh, spec.to),
                    proto=spec.proto,
                    ports=tuple(parse_port_range(p) for p in spec.ports),
                    name=label,
                )
            )
        except ConfigError as exc:
            raise ConfigError(f"acl {label}: {exc}") from None
    return AclPolicy(tuple(rules), allow_non_ip=acl.allow_non_ip)


# --- policy tests ---------------------------------------------------------------------------------

_TEST = re.compile(
    r"^\s*(?P<src>[a-z0-9][a-z0-9-]*)\s*(?:->|→)\s*(?P<dst>[a-z0-9][a-z0-9-]*)"
    r"(?::(?P<port>\d{1,5}))?(?:/(?P<proto>tcp|udp|icmp))?\s+(?P<verdict>allowed|denied)\s*$"
)


@dataclass(frozen=True)
class PolicyTest:
    """``src -> dst[:port][/proto] allowed|denied``; a port without protocol means tcp."""

    src: str
    dst: str
    proto: str | None
    port: int | None
    allowed: bool
    text: str


def parse_test(text: str) -> PolicyTest:
    m = _TEST.match(text)
    if m is None:
        raise ConfigError(
            f"policy test {text!r} is not 'SRC -> DST[:PORT][/tcp|udp|icmp] allowed|denied' (node names)"
        )
    port = int(m["port"]) if m["port"] is not None else None
    proto = m["proto"] or ("tcp" if port is not None else None)
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"policy test {text!r}: port out of range")
    if port is not None and proto == "icmp":
        raise ConfigError(f"policy test {text!r}: icmp has no ports")
    return PolicyTest(m["src"], m["dst"], proto, port, m["verdict"] == "allowed", text.strip())


@dataclass(frozen=True)
class TestResult:
    test: PolicyTest
    passed: bool
    message: str


def run_policy_tests(mesh: Mesh, acl: AclSpec, policy: AclPolicy | None = None) -> list[TestResult]:
    """Evaluate every test with the same matcher the nodes run. Raises ``ConfigError`` on bad tests."""
    policy = policy if policy is not None else compile_policy(mesh, acl)
    by_name = {n.name: n for n in mesh.nodes}
    results = []
    for text in acl.tests:
        t = parse_test(text)
        for name in (t.src, t.dst):
            if name not in by_name:
                raise ConfigError(f"policy test {text!r}: {unknown_node(mesh, name)}")
        src = by_name[t.src].vpn_address.packed
        dst = by_name[t.dst].vpn_address.packed
        got = policy.permits(src, dst, t.proto, t.port)
        what = f"{t.proto or 'any'}" + (f" port {t.port}" if t.port is not None else "")
        verdict = "allowed" if got else "denied"
        message = f"{t.src} -> {t.dst} ({what}) is {verdict}" + (
            "" if got == t.allowed else f", but the test expects {'allowed' if t.allowed else 'denied'}"
        )
        results.append(TestResult(t, got == t.allowed, message))
    return results


def check_security(
    mesh: Mesh, acl: AclSpec | None, key_expiry: Mapping[str, Any] | None = None
) -> list[Problem]:
    """Plan-time errors: unknown members, malformed or failing policy tests, expiry of unknown nodes."""
    problems: list[Problem] = []
    if acl is not None:
        policy: AclPolicy | None = None
        for i, spec in enumerate(acl.rules):
            try:
                compile_policy(mesh, AclSpec(rules=[spec]))
            except ConfigError as exc:
                problems.append(Problem(("acl", "rules", i), str(exc)))
        if not problems:
            policy = compile_policy(mesh, acl)
            for i, text in enumerate(acl.tests):
                try:
                    (result,) = run_policy_tests(mesh, AclSpec(rules=acl.rules, tests=[text]), policy)
                except ConfigError as exc:
                    problems.append(Problem(("acl", "tests", i), str(exc)))
                    continue
                if not result.passed:
                    problems.append(Problem(("acl", "tests", i), f"policy test failed: {result.message}"))
    names = {n.name for n in mesh.nodes}
    for name in key_expiry or {}:
        if name not in names:
            problems.append(Problem(("key_expiry", name), unknown_node(mesh, name)))
    return problems


# --- key expiry -----------------------------------------------------------------------------------


def _timestamp(value: dt.date | dt.datetime) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()


def expiry_timestamps(key_expiry: Mapping[str, dt.date | dt.datetime]) -> dict[str, float]:
    """Node name -> Unix time from which its key is refused."""
    return {name: _timestamp(value) for name, value in key_expiry.items()}


def expiry_warnings(
    key_expiry: Mapping[str, dt.date | dt.datetime], now: dt.datetime, warn_days: int = 30
) -> list[tuple[str, str]]:
    """``(kind, message)`` for plan warnings: ``key-expired`` and ``key-expiring`` (within ``warn_days``)."""
    now_ts = _timestamp(now if now.tzinfo else now.replace(tzinfo=dt.UTC))
    out = []
    for name, ts in sorted(expiry_timestamps(key_expiry).items(), key=lambda kv: kv[1]):
        when = dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if ts <= now_ts:
            out.append(
                ("key-expired", f"the key of {name} expired at {when}: other nodes refuse it; rotate it")
            )
        elif ts - now_ts <= warn_days * 86400:
            days = int((ts - now_ts) // 86400)
            out.append(
                (
                    "key-expiring",
                    f"the key of {name} expires at {when} (in {days} days): rotate it before then",
                )
            )
    return out


# --- the per-node security file -------------------------------------------------------------------


def security_file(
    mesh: Mesh,
    acl: AclSpec | None,
    key_expiry: Mapping[str, dt.date | dt.datetime] | None,
    public_keys: Mapping[str, str],
    node: Node | None = None,
) -> dict[str, Any]:
    """The content of ``/etc/vpncloud/<mesh>.security.yaml`` for ``node``.

    ACL and key expiry are the same for every node of the mesh; the ``relay`` section is the node's
    own (left out without ``node``). ``public_keys``: node name -> base62 public key (from the
    keystore). Nodes without a known key are left out of ``key_expiry`` (in password mode there is one
    shared key and no per-node expiry).
    """
    out: dict[str, Any] = {"version": 1}
    if acl is not None:
        out["acl"] = compile_policy(mesh, acl).to_dict()
    expiry = {}
    for name, ts in expiry_timestamps(key_expiry or {}).items():
        key = public_keys.get(name)
        if key is not None:
            expiry[key] = int(ts)
    if expiry:
        out["key_expiry"] = expiry
    relay = relay_settings(mesh, node) if node is not None else None
    if relay is not None:
        out["relay"] = relay
    return out


def needs_security_file(mesh: Mesh) -> bool:
    """Whether apply writes security files: an ACL, key expiry, or a node with relays on."""
    return mesh.acl is not None or bool(mesh.key_expiry) or any(relay_settings(mesh, n) for n in mesh.nodes)


def security_file_text(content: Mapping[str, Any]) -> str:
    header = "# Generated by vpncloud apply: ACL, trusted-key expiry and relays (no secrets). Do not edit.\n"
    return header + yaml.safe_dump(dict(content), sort_keys=False, default_flow_style=False)
