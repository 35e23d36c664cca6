"""``vpncloud plan``: what apply would change, computed as plain models, then rendered.

Resources of a mesh: ``node.<name>`` (the node's config file, key material and unit) and
``hosts.<mesh>`` (the managed /etc/hosts block). The desired attributes come from :mod:`render`, the
applied ones from :mod:`state`; the diff classifies each resource like terraform:

* ``+`` create, ``-`` destroy;
* ``~`` update in place = **reload** (SIGHUP keeps sessions): only peers, claims, trusted keys, timers,
  beacons, advertised addresses, statsd and hooks changed;
* ``-/+`` replace = **restart**: anything else (device, listen port, mode, the own key, the host...).

Secrets appear only as ``(sensitive value)`` (the plan holds digests, never values); keys that do not
exist yet are ``(known after apply)``. Rendering (:func:`plan_text`, :func:`print_plan`) only reads the
model; ``--json`` dumps the same model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, computed_field, model_validator
from rich.console import Console
from rich.text import Text

from .acl import expiry_warnings, security_file
from .keystore import ARCHIVE, Keystore
from .models import (
    Mesh,
    overlapping_claims,
    public_peers,
    relay_settings,
    relays_for,
    unknown_node,
    uses_relays,
)
from .render import UNKNOWN, KeyView, Sensitive, Unknown, flatten, hosts_block, render_mesh
from .state import MeshState, decode_attrs

__all__ = [
    "AttributeChange",
    "Drift",
    "KeyArchive",
    "Phase",
    "Plan",
    "PlanError",
    "PlanWarning",
    "Refresh",
    "ResourceChange",
    "RotationPlan",
    "compute_destroy",
    "compute_plan",
    "compute_rotation",
    "desired_resources",
    "diff_resources",
    "key_view",
    "merge_drift",
    "plan_text",
    "print_plan",
    "requested_replacements",
]

#: Attributes a running node picks up on reload; a change of anything else means a restart.
#: (relay.use is not: the daemon lowers its TUN MTU for relays only at start.)
RELOADABLE = frozenset(
    {"peers", "claims", "auto-claim", "crypto.trusted-keys", "peer-timeout", "keepalive", "switch-timeout",
     "advertise-addresses", "statsd.server", "statsd.prefix", "hook", "hooks", "beacon.store", "beacon.load",
     "beacon.interval", "beacon.password", "entries", "acl", "key-expiry", "relay.offer",
     "relay.at_once"}
)  # fmt: skip

Action = Literal["create", "update", "replace", "delete"]


class PlanError(Exception):
    """The plan cannot be computed safely (e.g. an applied node's key is missing)."""


class AttributeChange(BaseModel):
    """One attribute of a resource, before and after (JSON values; secrets never included)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Dotted attribute name (config keys are the original kebab-case).")
    before: Any = Field(default=None, description="Applied value (null when new, sensitive or unknown).")
    after: Any = Field(default=None, description="Desired value (null when removed, sensitive or unknown).")
    sensitive: bool = Field(default=False, description="A secret: values are never shown.")
    known_after_apply: bool = Field(default=False, description="The desired value exists only after apply.")
    known_before_apply: bool = Field(
        default=False,
        description="The previous value is itself only known after apply (later rotation phases).",
    )
    forces_replacement: bool = Field(default=False, description="This change needs a restart.")


class ResourceChange(BaseModel):
    """One resource that apply changes."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="Resource address: node.<name> or hosts.<mesh>.")
    action: Action = Field(description="create, update (reload), replace (restart) or delete.")
    attributes: list[AttributeChange] = Field(
        description="Changed attributes (all of them on create/delete)."
    )
    unchanged: int = Field(default=0, description="Number of unchanged attributes (hidden).")
    reason: str | None = Field(
        default=None, description="Why, when the resource changed outside vpncloud (see Plan.drift)."
    )


class Drift(BaseModel):
    """A resource whose reality differs from the applied state, and what apply does about it."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="node.<name>, or lab.<mesh> for the lab as a whole.")
    reason: str = Field(description="What changed outside vpncloud (daemon not running, ...).")
    action: Action = Field(description="What apply does to repair it (create or replace).")


class Refresh(BaseModel):
    """What the target's read (refresh) found."""

    model_config = ConfigDict(extra="forbid")

    drift: list[Drift] = Field(default_factory=list)
    skipped: str | None = Field(default=None, description="Why reality was not read (null: it was).")
    rebuild: str | None = Field(
        default=None, description="Why the target must be rebuilt as a whole to apply the mesh."
    )


class PlanWarning(BaseModel):
    """Something apply will do although it is probably not what you want."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        description="weak-password, unreachable-pair, relay-path, no-relay, overlapping-claims, ..."
    )
    message: str = Field(description="Human-readable explanation.")


class KeyArchive(BaseModel):
    """A key file no node uses any more: apply moves it to the keystore's dated archive."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="Key file name in the mesh's keystore directory (never its content).")
    reason: str = Field(description="Whose key it is and why it is no longer used.")


class Plan(BaseModel):
    """The plan of one mesh."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = Field(default=1, description="Plan file format.")
    mesh: str = Field(description="Mesh name.")
    mesh_file: str | None = Field(default=None, description="The mesh description the plan was made from.")
    inputs_hash: str = Field(
        description="Digest of the inputs (mesh, keys, state); a saved plan is stale when it differs."
    )
    drift: list[Drift] = Field(
        default_factory=list, description="Objects changed outside vpncloud, found by the refresh."
    )
    refresh_skipped: str | None = Field(
        default=None, description="Why reality was not read before planning (null: it was read)."
    )
    changes: list[ResourceChange] = Field(default_factory=list, description="Resources that change.")
    replace: list[str] = Field(default_factory=list, description="Nodes to restart as requested (-replace).")
    destroy: bool = Field(default=False, description="A plan of 'vpncloud destroy': remove everything.")
    key_archives: list[KeyArchive] = Field(
        default_factory=list, description="Unused key files apply moves to the keystore's archive."
    )
    warnings: list[PlanWarning] = Field(default_factory=list, description="Plan-time warnings.")

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: Any) -> Any:
        # ``summary`` is computed; a saved plan contains it, reading one back must accept it.
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "summary"}
        return data

    def count(self, action: Action) -> int:
        """How many resources get this action."""
        return sum(1 for c in self.changes if c.action == action)

    @computed_field(description="Counts per action.")  # type: ignore[prop-decorator]
    @property
    def summary(self) -> dict[str, int]:
        return {
            "add": self.count("create"),
            "change": self.count("update"),
            "replace": self.count("replace"),
            "destroy": self.count("delete"),
        }

    @property
    def has_changes(self) -> bool:
        """Whether apply would do anything."""
        return bool(self.changes or self.key_archives)


class Phase(BaseModel):
    """One ordered step of a rotation."""

    model_config = ConfigDict(extra="forbid")

    number: int = Field(description="1-based phase number.")
    title: str = Field(description="What the phase does.")
    plan: Plan = Field(description="Changes of this phase relative to the previous one.")


class RotationPlan(BaseModel):
    """``vpncloud rotate NODE``: add the new key to every trust list, switch the node, drop the old key."""

    model_config = ConfigDict(extra="forbid")

    mesh: str = Field(description="Mesh name.")
    node: str = Field(description="Node whose key rotates.")
    phases: list[Phase] = Field(description="Phases in order; apply waits for health between them.")


# --- desired state -----------------------------------------------------------------------------


def key_view(
    mesh: Mesh, keystore: Keystore, *, rotating: str | None = None, phase: int = 0, generate: bool = False
) -> KeyView:
    """The keys configs use. ``generate`` creates missing keys (apply only; plan never writes).

    During a rotation of ``rotating``: phase 1 trusts old and new key, phase 2 also switches the node
    to the new key, phase 3 trusts only the new key.
    """
    private: dict[str, Any] = {}
    public: dict[str, Any] = {}
    name = mesh.mesh.name
    if mesh.mesh.auth == "password":
        return KeyView({}, {}, [])
    trusted: list[Any] = []
    for node in sorted(mesh.nodes, key=lambda n: n.name):
        pair = keystore.ensure(name, node.name) if generate else keystore.get(name, node.name)
        private[node.name] = pair.private_key if pair else UNKNOWN
        public[node.name] = pair.public_key if pair else UNKNOWN
        trusted.append(public[node.name])
        if node.name == rotating and phase >= 1:
            new = (
                keystore.ensure(name, node.name, next_key=True)
                if generate
                else keystore.get(name, node.name, next_key=True)
            )
            new_public = new.public_key if new else Unknown(f"next public key of {node.name}")
            if phase >= 2:
                private[node.name] = new.private_key if new else Unknown(f"next private key of {node.name}")
                public[node.name] = new_public
            if phase >= 3:
                trusted[-1] = new_public
            else:
                trusted.append(new_public)
    return KeyView(private, public, trusted)


def desired_resources(mesh: Mesh, keys: KeyView) -> dict[str, dict[str, Any]]:
    """Flattened attributes of every resource the mesh wants."""
    resources: dict[str, dict[str, Any]] = {}
    by_name = {n.name: n for n in mesh.nodes}
    for name, rendered in render_mesh(mesh, keys).items():
        attrs: dict[str, Any] = {
            "host": rendered.host,
            "unit": rendered.unit,
            "config-path": rendered.config_path,
        }
        attrs.update(flatten(rendered.config))
        # The node's relay section of its security file, only what is on: meshes without relays plan
        # exactly as before, and dropping an unused "use: false" is no restart.
        relay = relay_settings(mesh, by_name[name]) or {}
        attrs.update({f"relay.{key}": True for key, on in relay.items() if on})
        resources[f"node.{name}"] = attrs
    resources[f"hosts.{mesh.mesh.name}"] = {"entries": hosts_block(mesh).splitlines()[1:-1]}
    if mesh.acl is not None or mesh.key_expiry:
        # The per-node security file (ACL, key expiry): no secrets, the same on every node.
        security = security_file(mesh, mesh.acl, mesh.key_expiry, {})
        resources[f"security.{mesh.mesh.name}"] = {
            "acl": json.dumps(security.get("acl"), sort_keys=True),
            "key-expiry": {name: str(value) for name, value in sorted(mesh.key_expiry.items())},
        }
    return resources


# --- diff --------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, (Sensitive, Unknown)):
        return None
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _has_unknown(value: Any) -> bool:
    return isinstance(value, Unknown) or (
        isinstance(value, list) and any(isinstance(v, Unknown) for v in value)
    )


def _is_sensitive(value: Any) -> bool:
    return isinstance(value, Sensitive)


def _same(before: Any, after: Any) -> bool:
    # Anonymous unknowns never equal anything; labelled ones (rotation phases) equal themselves.
    if after == UNKNOWN or (isinstance(after, list) and UNKNOWN in after):
        return False
    return bool(before == after)


def _attribute(name: str, before: Any, after: Any, *, replace: bool) -> AttributeChange:
    return AttributeChange(
        name=name,
        before=_json_value(before),
        after=_json_value(after),
        sensitive=_is_sensitive(before) or _is_sensitive(after),
        known_after_apply=_has_unknown(after),
        known_before_apply=_has_unknown(before),
        forces_replacement=replace and name not in RELOADABLE,
    )


def diff_resources(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> list[ResourceChange]:
    """Per-resource changes from applied (``before``) to desired (``after``) attributes."""
    changes: list[ResourceChange] = []
    for address in sorted(set(before) | set(after), key=lambda a: (not a.startswith("node."), a)):
        old, new = before.get(address), after.get(address)
        if old is None and new is not None:
            # Like terraform, a new resource lists only the attributes that are set.
            attrs = [_attribute(k, None, v, replace=False) for k, v in new.items() if v not in (None, [], {})]
            changes.append(ResourceChange(address=address, action="create", attributes=attrs))
        elif new is None and old is not None:
            attrs = [_attribute(k, v, None, replace=False) for k, v in old.items() if v not in (None, [], {})]
            changes.append(ResourceChange(address=address, action="delete", attributes=attrs))
        elif old is not None and new is not None:
            keys = list(new) + [k for k in old if k not in new]
            changed = [k for k in keys if not _same(old.get(k), new.get(k))]
            if not changed:
                continue
            replace = any(k not in RELOADABLE for k in changed)
            attrs = [_attribute(k, old.get(k), new.get(k), replace=replace) for k in changed]
            changes.append(
                ResourceChange(
                    address=address,
                    action="replace" if replace else "update",
                    attributes=attrs,
                    unchanged=len(keys) - len(changed),
                )
            )
    return changes


# --- warnings ----------------------------------------------------------------------------------


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _relay_path(
    names_a: list[str], names_b: list[str] | None, relays: list[str], symmetric: bool = False
) -> str:
    # names_b None: the pairs inside one group
    if names_b is None:
        ends = f"{names_a[0]} ↔ {names_a[1]}" if len(names_a) == 2 else f"{_names(names_a)} ↔ each other"
    else:
        ends = f"{_names(names_a)} ↔ {_names(names_b)}"
    if not relays:
        return f"{ends}: no relay available (both behind NAT: only hole punching connects them)"
    if symmetric:
        return f"{ends} via {' or '.join(relays)} (symmetric NAT: no direct path, relayed at once)"
    return f"{ends} via {' or '.join(relays)} (both behind NAT: when hole punching fails)"


def _nat_pair_warnings(mesh: Mesh) -> list[PlanWarning]:
    """Pairs of NAT nodes: unreachable, or the relay that carries them when hole punching fails.

    NAT nodes are grouped by the public nodes they reach and the relays they use: a pair is
    unreachable exactly when the groups' public nodes are disjoint, and its relays are the common
    ones. Grouping keeps this linear in the nodes for large meshes.
    """
    groups: dict[tuple[frozenset[str], frozenset[str], bool], list[str]] = {}
    for node in mesh.nodes:
        if node.behind_nat:
            peers = frozenset(p.name for p in public_peers(mesh, node))
            relays = (
                frozenset(r.name for r in relays_for(mesh, node)) if uses_relays(mesh, node) else frozenset()
            )
            groups.setdefault((peers, relays, node.symmetric_nat), []).append(node.name)
    order = {n.name: i for i, n in enumerate(mesh.nodes)}
    warnings = []
    for ((peers_a, relays_a, sym_a), names_a), (
        (peers_b, relays_b, sym_b),
        names_b,
    ) in itertools.combinations_with_replacement(groups.items(), 2):
        same = names_a is names_b
        if not peers_a or not peers_b or (same and len(names_a) < 2):
            continue
        if not peers_a & peers_b:
            warnings.append(
                PlanWarning(
                    kind="unreachable-pair",
                    message=f"{_names(names_a)} and {_names(names_b)} are both behind NAT and share no "
                    "public node: they cannot reach each other, not even through a relay",
                )
            )
            continue
        common = sorted(relays_a & relays_b, key=order.__getitem__)
        warnings.append(
            PlanWarning(
                kind="relay-path" if common else "no-relay",
                message=_relay_path(names_a, None if same else names_b, common, sym_a or sym_b),
            )
        )
    return warnings


def plan_warnings(mesh: Mesh) -> list[PlanWarning]:
    """Weak password mode, node pairs that cannot connect, overlapping claims."""
    warnings: list[PlanWarning] = []
    if mesh.mesh.auth == "password":
        warnings.append(
            PlanWarning(
                kind="weak-password",
                message="password mode is weak: the key is derived with PBKDF2 "
                "(4096 iterations, fixed salt), so a guessed password opens the whole mesh; "
                "prefer auth: keys",
            )
        )
    warnings += _nat_pair_warnings(mesh)
    settings = mesh.mesh
    if settings.path_mtu is not None and settings.interface_mtu > settings.path_mtu:
        overhead = 73 if settings.device_type == "tun" else 87  # spec 12: IPv6+UDP+crypto(+Ethernet)
        warnings.append(
            PlanWarning(
                kind="mtu",
                message=f"the VPN device MTU will be {settings.interface_mtu - overhead} (uplink "
                f"{settings.interface_mtu} - {overhead}) but the path carries only "
                f"{settings.path_mtu - overhead}: full-size packets will be fragmented or dropped; lower "
                "the uplink MTU or the device MTU in an ifup hook",
            )
        )
    for kind, message in expiry_warnings(mesh.key_expiry, dt.datetime.now(dt.UTC)):
        warnings.append(PlanWarning(kind=kind, message=message))
    for na, ca, nb, cb in overlapping_claims(mesh):
        warnings.append(
            PlanWarning(
                kind="overlapping-claims",
                message=f"claim {ca} of {na} overlaps claim {cb} of {nb} (the longest prefix wins)",
            )
        )
    return warnings


# --- plans -------------------------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, Sensitive):
            return {"sensitive": value.digest}
        if isinstance(value, SecretStr):
            return {"sensitive": Sensitive.of(value, low_entropy=False).digest}
        if isinstance(value, Unknown):
            return f"(known after apply){value.label}"
        return str(value)

    text = json.dumps(parts, sort_keys=True, default=default)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _mesh_fingerprint(mesh: Mesh) -> Any:
    # SecretStr dumps as "**********"; include a digest so a changed password changes the inputs.
    data = mesh.model_dump(mode="json")
    secrets = []
    if mesh.mesh.password is not None:
        secrets.append(Sensitive.of(mesh.mesh.password).digest)
    if mesh.beacons and mesh.beacons.password is not None:
        secrets.append(Sensitive.of(mesh.beacons.password).digest)
    return [data, secrets]


def _inputs_hash(mesh: Mesh, keys: KeyView, state: MeshState, drift: list[Drift] | None = None) -> str:
    # The desired configs are a function of the mesh and the keys, so hashing those (not the large
    # rendered attributes) is enough; the state is hashed as stored. Drift is part of the inputs: a
    # saved plan that restarts b is stale once b runs again (or a drifts).
    key_digests = {
        name: [str(keys.public.get(name)), _digest(private)] for name, private in sorted(keys.private.items())
    }
    parts: list[Any] = [_mesh_fingerprint(mesh), key_digests, state.model_dump_json()]
    if drift:
        parts.append([d.model_dump() for d in drift])
    return _digest(*parts)


def _check_keys_not_lost(mesh: Mesh, state: MeshState, keys: KeyView) -> None:
    for node in mesh.nodes:
        applied = state.resources.get(f"node.{node.name}")
        if applied and applied.get("crypto.private-key") and isinstance(keys.private.get(node.name), Unknown):
            raise PlanError(
                f"node {node.name!r} was applied with a key that is missing from the keystore; "
                "restore the keystore (keys are never regenerated silently) or rotate the node's key"
            )


def _address_order(address: str) -> tuple[int, str]:
    return ({"lab": 0, "node": 1}.get(address.split(".", 1)[0], 2), address)


def merge_drift(changes: list[ResourceChange], drift: list[Drift]) -> list[ResourceChange]:
    """The changes plus the repairs of drifted resources.

    A drifted node that also changes in the mesh file is replaced once (a restart covers a reload);
    one that is created or destroyed anyway needs no repair.
    """
    merged = [c.model_copy(deep=True) for c in changes]
    by_address = {c.address: c for c in merged}
    for item in drift:
        change = by_address.get(item.address)
        if change is None:
            merged.append(
                ResourceChange(address=item.address, action=item.action, attributes=[], reason=item.reason)
            )
        elif change.action in ("update", "replace"):
            change.action = "replace"
            change.reason = item.reason
    return sorted(merged, key=lambda c: _address_order(c.address))


def requested_replacements(mesh: Mesh, replace: list[str]) -> list[Drift]:
    """``-replace NODE``: restarts planned like repairs (the node must exist)."""
    names = {n.name for n in mesh.nodes}
    for node in replace:
        if node not in names:
            raise PlanError(f"-replace {node}: the mesh has no node {node!r}")
    return [Drift(address=f"node.{n}", reason="replacement requested", action="replace") for n in replace]


def _key_archives(keystore: Keystore, mesh: str, nodes: set[str]) -> list[KeyArchive]:
    return [KeyArchive(file=f, reason=why) for f, why in keystore.unused(mesh, nodes).items()]


def compute_plan(
    mesh: Mesh,
    keystore: Keystore,
    state: MeshState,
    *,
    mesh_file: str | None = None,
    refresh: Refresh | None = None,
    replace: list[str] | None = None,
) -> Plan:
    """The plan of one mesh against its applied state (reads the keystore, never writes it).

    ``refresh`` is what the target read: drifted resources become changes that repair them;
    ``replace`` names nodes to restart (with a fresh render) although nothing changed.
    """
    keys = key_view(mesh, keystore)
    _check_keys_not_lost(mesh, state, keys)
    desired = desired_resources(mesh, keys)
    before = {address: decode_attrs(attrs) for address, attrs in state.resources.items()}
    drift = refresh.drift if refresh else []
    requested = requested_replacements(mesh, replace or [])
    changes = merge_drift(merge_drift(diff_resources(before, desired), drift), requested)
    if refresh is not None and refresh.rebuild and not any(c.address.startswith("lab.") for c in changes):
        rebuild = ResourceChange(address=f"lab.{mesh.mesh.name}", action="replace", attributes=[])
        changes.insert(0, rebuild.model_copy(update={"reason": refresh.rebuild}))
    return Plan(
        mesh=mesh.mesh.name,
        mesh_file=mesh_file,
        inputs_hash=_inputs_hash(mesh, keys, state, drift + requested),
        drift=drift,
        refresh_skipped=refresh.skipped if refresh else None,
        changes=changes,
        replace=sorted(replace or []),
        key_archives=_key_archives(keystore, mesh.mesh.name, {n.name for n in mesh.nodes}),
        warnings=plan_warnings(mesh),
    )


def compute_destroy(mesh: Mesh, keystore: Keystore, state: MeshState, *, target: str | None) -> Plan:
    """``vpncloud destroy``: remove every applied resource (and the lab), archive every key."""
    before = {address: decode_attrs(attrs) for address, attrs in state.resources.items()}
    changes = diff_resources(before, {})
    if target == "lab":
        changes.insert(0, ResourceChange(address=f"lab.{mesh.mesh.name}", action="delete", attributes=[]))
    return Plan(
        mesh=mesh.mesh.name,
        inputs_hash=_digest("destroy", state.model_dump_json()),
        changes=changes,
        destroy=True,
        key_archives=_key_archives(keystore, mesh.mesh.name, set()),
    )


ROTATION_TITLES = (
    "trust the new key of {node} everywhere (reload)",
    "switch {node} to its new key (restart)",
    "remove the old key of {node} from every trust list (reload)",
)


def compute_rotation(mesh: Mesh, keystore: Keystore, state: MeshState, node: str) -> RotationPlan:
    """The three ordered phases of rotating ``node``'s key; each phase diffs against the previous one.

    Refused while other changes are pending: a rotation must start from the applied mesh, otherwise
    phase 1 would also carry unrelated restarts.
    """
    if mesh.mesh.auth != "keys":
        raise PlanError("key rotation needs auth: keys (password meshes have no per-node keys)")
    if node not in {n.name for n in mesh.nodes}:
        raise PlanError(unknown_node(mesh, node))
    if f"node.{node}" not in state.resources:
        raise PlanError(f"node {node!r} is not applied yet; apply the mesh first")
    progress = state.rotation
    if progress is not None and progress.node != node:
        raise PlanError(f"a rotation of {progress.node!r} is in progress; finish it first")
    done = progress.phase if progress else 0
    base = compute_plan(mesh, keystore, state)
    if base.has_changes and done == 0:
        raise PlanError("the mesh has pending changes; apply them before rotating a key")
    before = {address: decode_attrs(attrs) for address, attrs in state.resources.items()}
    phases = []
    for number in (1, 2, 3):
        keys = key_view(mesh, keystore, rotating=node, phase=number)
        desired = desired_resources(mesh, keys)
        changes = diff_resources(before, desired) if number > done else []
        title = ROTATION_TITLES[number - 1].format(node=node)
        if number <= done:
            title += " (done)"
        phases.append(
            Phase(
                number=number,
                title=title,
                plan=Plan(mesh=mesh.mesh.name, inputs_hash=_inputs_hash(mesh, keys, state), changes=changes),
            )
        )
        if number > done:
            before = desired
    return RotationPlan(mesh=mesh.mesh.name, node=node, phases=phases)


# --- rendering ---------------------------------------------------------------------------------

_SYMBOL = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}
_STYLE = {"create": "green", "update": "yellow", "replace": "magenta", "delete": "red"}
_TITLE = {
    "create": "will be created",
    "update": "will be updated in place (reload)",
    "replace": "must be replaced (restart)",
    "delete": "will be destroyed",
}


def _show(value: Any, *, sensitive: bool = False) -> str:
    if sensitive:
        return "(sensitive value)"
    if value is None:
        return "null"
    return json.dumps(value)


def _attr_lines(change: ResourceChange, attr: AttributeChange) -> Iterable[tuple[str, str]]:
    pad = " " * 6
    note = "  # forces replacement" if attr.forces_replacement else ""
    if change.action == "create":
        after = "(known after apply)" if attr.known_after_apply and not isinstance(attr.after, list) else None
        if attr.known_after_apply and isinstance(attr.after, list):
            shown = (
                "["
                + ", ".join("(known after apply)" if v is None else json.dumps(v) for v in attr.after)
                + "]"
            )
        else:
            shown = after or _show(attr.after, sensitive=attr.sensitive)
        yield "green", f"{pad}+ {attr.name} = {shown}"
        return
    if change.action == "delete":
        yield "red", f"{pad}- {attr.name} = {_show(attr.before, sensitive=attr.sensitive)}"
        return
    if isinstance(attr.before, list) and isinstance(attr.after, list) and not attr.sensitive:
        yield "yellow", f"{pad}~ {attr.name} = [{note}"
        # In plan lists, null only ever stands for a value known after apply (configs hold no nulls).
        old = ["(known after apply)" if v is None else json.dumps(v) for v in attr.before]
        new = ["(known after apply)" if v is None else json.dumps(v) for v in attr.after]
        kept = 0
        for value in old:
            if value not in new:
                yield "red", f"{pad}    - {value},"
            else:
                kept += 1
        for value in new:
            if value not in old:
                yield "green", f"{pad}    + {value},"
        if kept:
            yield "dim", f"{pad}      # ({kept} unchanged element{'s' if kept != 1 else ''} hidden)"
        yield "yellow", f"{pad}  ]"
        return
    after = "(known after apply)" if attr.known_after_apply else _show(attr.after, sensitive=attr.sensitive)
    before = (
        "(known after apply)" if attr.known_before_apply else _show(attr.before, sensitive=attr.sensitive)
    )
    if attr.sensitive and not attr.known_after_apply:
        after = "(sensitive value)"
    yield "yellow", f"{pad}~ {attr.name} = {before} -> {after}{note}"


def drift_lines(plan: Plan) -> list[tuple[str, str]]:
    """The refresh section: objects changed outside vpncloud (or why reality was not read)."""
    lines: list[tuple[str, str]] = []
    if plan.refresh_skipped:
        lines += [("dim", f"Refresh skipped: {plan.refresh_skipped}"), ("", "")]
    if plan.drift:
        lines.append(("bold", "Note: Objects have changed outside of vpncloud"))
        lines.append(("", ""))
        lines.append(("", "Reality differs from what the last apply left:"))
        for item in plan.drift:
            lines.append(("", ""))
            lines.append(("bold", f"  # {item.address} has changed outside vpncloud: {item.reason}"))
        lines.append(("", ""))
        lines.append(("", "Apply repairs them with the actions below."))
        lines.append(("", ""))
    return lines


def plan_lines(plan: Plan) -> list[tuple[str, str]]:
    """The plan as (style, text) lines; styles are rich style names, the text carries all meaning."""
    lines: list[tuple[str, str]] = drift_lines(plan)
    if not plan.has_changes:
        lines.append(("green", f"No changes. Mesh {plan.mesh!r} matches the applied state."))
    else:
        lines.append(("", f"VpnCloud will perform the following actions on mesh {plan.mesh!r}:"))
        for change in plan.changes:
            style = _STYLE[change.action]
            lines.append(("", ""))
            title = _TITLE[change.action]
            if not change.address.startswith("node."):
                title = title.split(" (")[0]  # only nodes are reloaded or restarted
            if change.reason:
                title += f": {change.reason}"
            lines.append(("bold", f"  # {change.address} {title}"))
            lines.append((style, f"  {_SYMBOL[change.action]} {change.address} {{"))
            for attr in change.attributes:
                lines.extend(_attr_lines(change, attr))
            if change.unchanged:
                s = "s" if change.unchanged != 1 else ""
                lines.append(("dim", f"        # ({change.unchanged} unchanged attribute{s} hidden)"))
            lines.append(("", "    }"))
    for item in plan.key_archives:
        lines.append(("", ""))
        lines.append(("bold", f"  # {item.reason} will be archived: {item.file} -> {ARCHIVE}/<UTC date>/"))
    for warning in plan.warnings:
        lines.append(("", ""))
        if warning.kind == "relay-path":
            # expected in a mesh with NAT nodes, not something to fix
            lines.append(("bold cyan", f"Path: {warning.message}"))
        else:
            lines.append(("bold yellow", f"Warning: {warning.message}"))
    lines.append(("", ""))
    counts = plan.summary
    lines.append(
        (
            "bold",
            f"Plan: {counts['add']} to add, {counts['change']} to change, "
            f"{counts['replace']} to replace, {counts['destroy']} to destroy."
            + (f" {len(plan.key_archives)} key(s) to archive." if plan.key_archives else ""),
        )
    )
    return lines


def rotation_lines(rotation: RotationPlan) -> list[tuple[str, str]]:
    """A rotation as (style, text) lines: one plan per phase."""
    lines: list[tuple[str, str]] = [
        ("bold", f"Key rotation of node {rotation.node!r} in mesh {rotation.mesh!r}:")
    ]
    for phase in rotation.phases:
        lines.append(("", ""))
        lines.append(("bold cyan", f"Phase {phase.number}: {phase.title}"))
        if phase.plan.changes:
            lines.extend(plan_lines(phase.plan)[1:])
        else:
            lines.append(("dim", "  (nothing to do)"))
    return lines


def lines_text(lines: list[tuple[str, str]]) -> str:
    """Plain text of styled lines (what golden files compare)."""
    return "\n".join(text for _, text in lines) + "\n"


def plan_text(plan: Plan) -> str:
    """The plan as plain text."""
    return lines_text(plan_lines(plan))


def print_lines(lines: list[tuple[str, str]], console: Console) -> None:
    """Print styled lines with rich (colour only when the console supports it)."""
    for style, text in lines:
        console.print(Text(text, style=style or ""), soft_wrap=True, highlight=False)


def print_plan(plan: Plan, console: Console) -> None:
    """Print a plan with rich."""
    print_lines(plan_lines(plan), console)
