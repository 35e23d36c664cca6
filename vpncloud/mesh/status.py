"""``vpncloud status MESH``: is the applied mesh whole? Per node health and who is connected to whom.

Read from the target (the lab, or a fleet's hosts through Ansible's refresh play) and compared with
what the mesh expects: every node up, using its key from the keystore, connected to the nodes it
should connect to. Nothing secret is read or shown (public keys and counters only).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from vpncloud.daemon.control import _fmt_bytes as fmt_bytes
from vpncloud.daemon.control import relayed_peers

from .fleet import HostFacts
from .keystore import Keystore
from .models import Mesh, public_peers

__all__ = ["MeshStatus", "NodeHealth", "fleet_mesh_status", "lab_mesh_status", "print_mesh_status"]


class NodeHealth(BaseModel):
    """One node as its daemon reports it."""

    name: str
    up: bool = Field(description="Daemon running and its control socket answering.")
    version: str | None = None
    dataplane: str | None = Field(default=None, description="Data-plane mode the daemon runs.")
    public_key_matches: bool | None = Field(
        default=None, description="The node uses its keystore key (null: password mesh or unknown)."
    )
    peers: int = Field(default=0, description="Connected peers.")
    last_handshake_secs: float | None = Field(
        default=None, description="Seconds since the newest session with a peer was established."
    )
    traffic_in_bytes: int = 0
    traffic_out_bytes: int = 0
    socket: str | None = None
    error: str | None = None


class MeshStatus(BaseModel):
    """The whole mesh: nodes, the connection matrix and what is missing."""

    mesh: str
    target: str
    nodes: list[NodeHealth]
    connected: dict[str, dict[str, bool]] = Field(description="connected[a][b]: a lists b as a peer.")
    expected: dict[str, dict[str, bool]] = Field(description="expected[a][b]: the mesh wants a-b.")
    relayed: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="relayed[a][b]: the relay a reaches b through (node name, or node id when the relay "
        "is not a node of the mesh); pairs reached directly are absent.",
    )
    problems: list[str] = Field(default_factory=list, description="Why the mesh is not whole.")

    @property
    def whole(self) -> bool:
        """Every node up with its own key and every expected link present."""
        return not self.problems


def _health(node: Any, keys: set[str]) -> NodeHealth:
    data = node.daemon or {}
    raw = data.get("peers")
    peers: list[dict[str, Any]] = [p for p in raw if isinstance(p, dict)] if isinstance(raw, list) else []
    connected = [
        float(p["connected_secs"]) for p in peers if isinstance(p.get("connected_secs"), int | float)
    ]
    traffic = [p.get("traffic") or {} for p in peers]
    public = data.get("public_key")
    return NodeHealth(
        name=node.name,
        up=node.running and node.error is None,
        version=data.get("version"),
        dataplane=(data.get("dataplane") or {}).get("mode"),
        public_key_matches=(public in keys) if keys and public else None,
        peers=len(node.peers),
        last_handshake_secs=min(connected) if connected else None,
        traffic_in_bytes=sum(int(t.get("in_bytes") or 0) for t in traffic),
        traffic_out_bytes=sum(int(t.get("out_bytes") or 0) for t in traffic),
        socket=node.socket,
        error=node.error,
    )


def _relayed(daemons: dict[str, Any], ids: dict[str, str]) -> dict[str, dict[str, str]]:
    """relayed[a][b] from each node's status (``daemons``: name -> status JSON; ``ids``: id -> name)."""
    out: dict[str, dict[str, str]] = {}
    for name, data in daemons.items():
        pairs = {
            ids.get(peer, peer[:12]): ids.get(relay, relay[:12])
            for peer, relay in relayed_peers(data).items()
        }
        if pairs:
            out[name] = dict(sorted(pairs.items()))
    return out


def lab_mesh_status(mesh: Mesh, keystore: Keystore, lab_dir: Any) -> MeshStatus:
    """The mesh as the lab runs it (``LabError`` when the lab is not up)."""
    from vpncloud.lab import lab

    status = lab.lab_status(mesh.mesh.name, lab_dir, ping=False)
    wanted = [n.name for n in mesh.nodes]
    running = {n.name: n for n in status.nodes}
    nodes = []
    problems = []
    for name in wanted:
        if name not in running:
            nodes.append(NodeHealth(name=name, up=False, error="not in the lab"))
            problems.append(f"{name}: not in the lab")
            continue
        health = _health(running[name], _own_keys(mesh, keystore, name))
        nodes.append(health)
        if not health.up:
            problems.append(f"{name}: {health.error or 'down'}")
        elif health.public_key_matches is False:
            problems.append(f"{name}: uses a key that is not its key in the keystore")
    # In the lab every node shares one LAN, so the mesh expects every pair to be connected.
    expected = {a: {b: a != b for b in wanted} for a in wanted}
    connected = {
        a: {b: a != b and a in running and b in {p.name for p in running[a].peers} for b in wanted}
        for a in wanted
    }
    problems += [
        f"{a} -> {b}: not connected" for a in wanted for b in wanted if expected[a][b] and not connected[a][b]
    ]
    ids = {str(n.node_id): n.name for n in status.nodes if n.node_id}
    return MeshStatus(
        mesh=mesh.mesh.name,
        target="lab",
        nodes=nodes,
        connected=connected,
        expected=expected,
        relayed=_relayed({n.name: n.daemon for n in status.nodes if n.name in wanted}, ids),
        problems=problems,
    )


def _own_keys(mesh: Mesh, keystore: Keystore, name: str) -> set[str]:
    pair = keystore.get(mesh.mesh.name, name) if mesh.mesh.auth == "keys" else None
    return {pair.public_key} if pair else set()


def fleet_mesh_status(mesh: Mesh, keystore: Keystore, facts: dict[str, HostFacts]) -> MeshStatus:
    """The mesh as its hosts run it, from the facts Ansible read (``AnsibleTarget.facts``).

    Peers are named by node id: each running node reports its own, so a peer whose node is down
    cannot be named, and its link counts as missing. Expected links are those the mesh configures
    (a node connects to the reachable nodes it shares a group with), not every pair.
    """
    wanted = [n.name for n in mesh.nodes]
    ids = {
        str(f.status["node_id"]): name
        for name, f in facts.items()
        if f.status is not None and f.status.get("node_id")
    }
    nodes, problems = [], []
    peers_of: dict[str, set[str]] = {}
    for name in wanted:
        f = facts.get(name)
        if f is None or not f.reachable:
            error = f"host {f.host} {f.error}" if f is not None else "not in the inventory"
            nodes.append(NodeHealth(name=name, up=False, error=error))
            problems.append(f"{name}: {error}")
            continue
        raw = f.status.get("peers") if f.status is not None else None
        listed = [p for p in raw if isinstance(p, dict)] if isinstance(raw, list) else []
        peers_of[name] = {ids[str(p.get("node_id"))] for p in listed if str(p.get("node_id")) in ids}
        view = SimpleNamespace(
            name=name,
            daemon=f.status,
            running=f.status is not None,
            error=None if f.status is not None else (f.status_error or "daemon not running"),
            peers=[SimpleNamespace(name=p) for p in sorted(peers_of[name])],
            socket=None,
        )
        health = _health(view, _own_keys(mesh, keystore, name))
        nodes.append(health)
        if not health.up:
            problems.append(f"{name}: {health.error or 'down'}")
        elif health.public_key_matches is False:
            problems.append(f"{name}: uses a key that is not its key in the keystore")
    by_name = {n.name: n for n in mesh.nodes}
    dials = {a: {p.name for p in public_peers(mesh, by_name[a])} for a in wanted}
    expected = {a: {b: a != b and (b in dials[a] or a in dials[b]) for b in wanted} for a in wanted}
    connected = {a: {b: b in peers_of.get(a, set()) for b in wanted} for a in wanted}
    problems += [
        f"{a} -> {b}: not connected" for a in wanted for b in wanted if expected[a][b] and not connected[a][b]
    ]
    daemons = {name: f.status for name, f in facts.items() if name in peers_of}
    return MeshStatus(
        mesh=mesh.mesh.name, target="ansible", nodes=nodes, connected=connected, expected=expected,
        relayed=_relayed(daemons, ids), problems=problems,
    )  # fmt: skip


def print_mesh_status(status: MeshStatus, console: Console) -> None:
    """Node table, connection matrix and the problems, for people."""
    table = Table(title=f"mesh {status.mesh} ({status.target}) — {'whole' if status.whole else 'NOT whole'}")
    for col in ("node", "up", "version", "data plane", "key", "peers", "last handshake", "in", "out"):
        table.add_column(col, no_wrap=True)
    for n in status.nodes:
        key = {True: "ok", False: "[red]WRONG[/red]", None: "-"}[n.public_key_matches]
        table.add_row(
            n.name,
            "[green]up[/green]" if n.up else f"[red]{n.error or 'down'}[/red]",
            n.version or "-",
            n.dataplane or "-",
            key,
            str(n.peers),
            f"{n.last_handshake_secs:.0f} s ago" if n.last_handshake_secs is not None else "-",
            fmt_bytes(n.traffic_in_bytes),
            fmt_bytes(n.traffic_out_bytes),
        )
    console.print(table)
    matrix = Table(title="connected: row lists column as a peer (via R: through relay R)")
    names = [n.name for n in status.nodes]
    matrix.add_column("from \\ to")
    for name in names:
        matrix.add_column(name, justify="center")
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append("·")
            elif b in status.relayed.get(a, {}):
                cells.append(f"[yellow]via {status.relayed[a][b]}[/yellow]")
            elif status.connected[a][b]:
                cells.append("[green]yes[/green]")
            else:
                cells.append("[red]NO[/red]" if status.expected[a][b] else "-")
        matrix.add_row(a, *cells)
    console.print(matrix)
    for problem in status.problems:
        console.print(f"[red]not whole:[/red] {problem}", highlight=False)
