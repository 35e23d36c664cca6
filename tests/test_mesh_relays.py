"""Relays in mesh.yaml (issue 22): defaults, per-node security files, what the daemon reads of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from test_mesh_plan import FakeTarget

from vpncloud.daemon.security_file import load_security_file, parse_security
from vpncloud.mesh.apply import LabTarget, apply_mesh
from vpncloud.mesh.fleet import HostFacts
from vpncloud.mesh.keystore import Keystore
from vpncloud.mesh.loader import load_mesh_text
from vpncloud.mesh.models import relay_settings
from vpncloud.mesh.plan import key_view, plan_warnings
from vpncloud.mesh.render import render_mesh
from vpncloud.mesh.status import fleet_mesh_status, print_mesh_status

MESH = """\
mesh:
  name: r
  vpn_network: 10.5.0.0/24
nodes:
  - {name: p, host: hp, underlay: 192.0.2.1, vpn_address: 10.5.0.1}
  - {name: q, host: hq, underlay: 192.0.2.2, vpn_address: 10.5.0.2}
  - {name: a, host: ha, behind_nat: true, vpn_address: 10.5.0.3}
  - {name: c, host: hc, behind_nat: true, vpn_address: 10.5.0.4}
acl:
  rules:
    - {from: ["*"], to: ["*"], proto: icmp}
"""


def settings(text: str) -> dict[str, dict[str, bool] | None]:
    mesh = load_mesh_text(text)
    return {n.name: relay_settings(mesh, n) for n in mesh.nodes}


def test_defaults_public_nodes_relay_for_nat_nodes() -> None:
    assert settings(MESH) == {
        "p": {"offer": True, "use": False},
        "q": {"offer": True, "use": False},
        "a": {"offer": False, "use": True},
        "c": {"offer": False, "use": True},
    }


def test_a_single_nat_node_needs_no_relay() -> None:
    # it reaches the public nodes directly, and no other node is behind NAT
    text = MESH.replace("  - {name: c, host: hc, behind_nat: true, vpn_address: 10.5.0.4}\n", "")
    assert all(v is None for v in settings(text).values())


def test_without_relays_nobody_uses_one() -> None:
    text = MESH.replace("underlay: 192.0.2.1,", "underlay: 192.0.2.1, relay: false,")
    text = text.replace("underlay: 192.0.2.2,", "underlay: 192.0.2.2, relay: false,")
    assert all(v is None for v in settings(text).values())


def test_a_node_that_opts_out_leaves_the_others_relayed() -> None:
    result = settings(MESH.replace("vpn_address: 10.5.0.4}", "vpn_address: 10.5.0.4, use_relays: false}"))
    assert result["c"] is None
    assert result["a"] == {"offer": False, "use": True}
    assert result["p"] == {"offer": True, "use": False}


def test_a_nat_node_told_to_relay_is_no_relay_for_other_nat_nodes() -> None:
    # relays must have a session with both ends; NAT nodes only connect out to public nodes
    result = settings(MESH.replace("vpn_address: 10.5.0.3}", "vpn_address: 10.5.0.3, relay: true}"))
    assert result["a"] == {"offer": True, "use": True}
    assert result["c"] == {"offer": False, "use": True}


SYMMETRIC = MESH.replace("vpn_address: 10.5.0.3}", "vpn_address: 10.5.0.3, symmetric_nat: true}")


def test_a_symmetric_nat_sends_both_ends_of_its_pairs_through_a_relay_at_once(tmp_path: Path) -> None:
    """The plan knows a ↔ c cannot connect directly (a's NAT is symmetric): both ends' security
    files say at_once, the daemon reads it, and plan names the path as known."""
    assert settings(SYMMETRIC) == {
        "p": {"offer": True, "use": False},
        "q": {"offer": True, "use": False},
        "a": {"offer": False, "use": True, "at_once": True},
        "c": {"offer": False, "use": True, "at_once": True},
    }
    # a third NAT node: still relayed at once with a (symmetric), so at_once too
    three = SYMMETRIC.replace(
        "acl:", "  - {name: e, host: he, behind_nat: true, vpn_address: 10.5.0.5}\nacl:"
    )
    assert settings(three)["e"] == {"offer": False, "use": True, "at_once": True}
    # without a symmetric NAT nothing is known: the files stay as they were
    assert all(v is None or "at_once" not in v for v in settings(MESH).values())
    paths = [w.message for w in plan_warnings(load_mesh_text(SYMMETRIC)) if w.kind == "relay-path"]
    assert paths == ["a ↔ c via p or q (symmetric NAT: no direct path, relayed at once)"]
    store, state_dir = Keystore(tmp_path / "keys"), tmp_path / "state"
    apply_mesh(load_mesh_text(SYMMETRIC), store, state_dir, FakeTarget())
    read = load_security_file(state_dir / "r" / "a.security.yaml").relay
    assert read is not None and read.at_once and read.use


def test_symmetric_nat_needs_behind_nat() -> None:
    with pytest.raises(Exception, match="symmetric_nat needs behind_nat"):
        load_mesh_text(MESH.replace("underlay: 192.0.2.1,", "underlay: 192.0.2.1, symmetric_nat: true,"))


def test_apply_writes_a_security_file_per_node_that_the_daemon_reads(tmp_path: Path) -> None:
    store, state_dir = Keystore(tmp_path / "keys"), tmp_path / "state"
    mesh = load_mesh_text(MESH)
    apply_mesh(mesh, store, state_dir, FakeTarget())
    read = {n: load_security_file(state_dir / "r" / f"{n}.security.yaml") for n in ("p", "a")}
    assert read["p"].relay is not None and (read["p"].relay.offer, read["p"].relay.use) == (True, False)
    assert read["a"].relay is not None and (read["a"].relay.offer, read["a"].relay.use) == (False, True)
    # the mesh-wide parts are unchanged and the same on every node
    assert read["p"].acl is not None and read["p"].acl.to_dict() == read["a"].acl.to_dict()  # type: ignore[union-attr]


def test_lab_spec_gives_each_node_its_own_relay_section_beside_the_acl(tmp_path: Path) -> None:
    # the lab needs an underlay address for every node, even one marked behind NAT
    text = MESH.replace("ha, behind_nat: true,", "ha, behind_nat: true, underlay: 192.0.2.3,")
    mesh = load_mesh_text(text.replace("hc, behind_nat: true,", "hc, behind_nat: true, underlay: 192.0.2.4,"))
    keys = key_view(mesh, Keystore(tmp_path / "keys"), generate=True)
    spec = LabTarget(lab_dir=tmp_path / "lab").spec(mesh, render_mesh(mesh, keys))
    parsed = {n.name: parse_security(n.security) for n in spec.nodes}
    assert all(p.acl is not None for p in parsed.values())
    sections = {n: p.relay for n, p in parsed.items()}
    assert {n: (r.offer, r.use) for n, r in sections.items() if r is not None} == {
        "p": (True, False),
        "q": (True, False),
        "a": (False, True),
        "c": (False, True),
    }


def test_mesh_status_shows_relayed_pairs_with_their_relay(tmp_path: Path) -> None:
    mesh = load_mesh_text(MESH)
    ids = {n.name: n.name * 16 for n in mesh.nodes}  # hex-like node ids, one per node

    def facts(name: str, peers: list[str], relayed: dict[str, str]) -> HostFacts:
        status = {
            "node_id": ids[name],
            "peers": [{"addr": "192.0.2.9:3210", "node_id": ids[p]} for p in peers],
            "relay": {
                "relayed_peers": [
                    {"addr": "[100::1]:1", "node_id": ids[p], "relay": ids[r]} for p, r in relayed.items()
                ]
            },
        }
        return HostFacts(host=f"h{name}", reachable=True, node=name, status=status)

    status = fleet_mesh_status(
        mesh,
        Keystore(tmp_path / "keys"),
        {
            "p": facts("p", ["q", "a", "c"], {}),
            "q": facts("q", ["p", "a", "c"], {}),
            "a": facts("a", ["p", "q", "c"], {"c": "p"}),
            "c": facts("c", ["p", "q", "a"], {"a": "p"}),
        },
    )
    assert status.relayed == {"a": {"c": "p"}, "c": {"a": "p"}}
    assert status.whole
    console = Console(record=True, width=200)
    print_mesh_status(status, console)
    rows = {line.split()[1]: line for line in console.export_text().splitlines() if line.startswith("│ ")}
    assert "via p" in rows["a"] and "via p" in rows["c"] and "via" not in rows["p"]
