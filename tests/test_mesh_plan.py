"""Plan/apply without a real target: golden plan outputs, masking, saved plans, exit codes, convergence.

Golden files live in tests/golden/; regenerate them with ``UPDATE_GOLDEN=1 pytest tests/test_mesh_plan.py``
and review the diff. Keys are written from fixed seeds so the public keys in the goldens are stable.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from vpncloud.core import base62
from vpncloud.mesh import cli
from vpncloud.mesh.apply import ApplyError, apply_mesh, apply_rotation
from vpncloud.mesh.cli import main
from vpncloud.mesh.keystore import Keystore
from vpncloud.mesh.loader import load_mesh_text
from vpncloud.mesh.models import Mesh
from vpncloud.mesh.plan import (
    Drift,
    Plan,
    PlanError,
    Refresh,
    ResourceChange,
    compute_plan,
    compute_rotation,
    lines_text,
    plan_text,
    rotation_lines,
)
from vpncloud.mesh.render import RenderedNode
from vpncloud.mesh.state import load_state

GOLDEN = Path(__file__).parent / "golden"

MESH = """\
mesh:
  name: g
  vpn_network: 10.5.0.0/24
  timers: {peer_timeout: 300}
nodes:
  - name: a
    host: ha
    underlay: 192.0.2.1
    vpn_address: 10.5.0.1
  - name: b
    host: hb
    underlay: 192.0.2.2
    vpn_address: 10.5.0.2
  - name: c
    host: hc
    behind_nat: true
    vpn_address: 10.5.0.3
    claims: [10.6.0.0/24]
"""


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"plan output differs from {path}"


def fixed_key(store: Keystore, mesh: str, node: str) -> str:
    """Write a deterministic key (test only); returns the base62 seed."""
    seed = hashlib.sha256(f"test-{node}".encode()).digest()
    directory = store.root / mesh
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(store.root, 0o700)
    path = store.path(mesh, node)
    path.write_text(base62.encode(seed) + "\n")
    os.chmod(path, 0o600)
    return base62.encode(seed)


class FakeTarget:
    """Records what apply deploys; optionally fails once to simulate an interruption."""

    name = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[list[tuple[str, str]]] = []
        self.health_checks = 0
        self.rotations: list[tuple[str, int] | None] = []

    def deploy(
        self,
        mesh: Mesh,
        rendered: dict[str, RenderedNode],
        changes: list[ResourceChange],
        progress: Callable[[str], None],
        rotation: tuple[str, int] | None = None,
    ) -> None:
        self.rotations.append(rotation)
        if self.fail:
            self.fail = False
            raise ApplyError("node a: step restart: simulated failure")
        self.calls.append([(c.address, c.action) for c in changes])

    def wait_healthy(self, mesh: Mesh, progress: Callable[[str], None]) -> None:
        self.health_checks += 1


@pytest.fixture
def env(tmp_path: Path) -> tuple[Keystore, Path]:
    return Keystore(tmp_path / "keys"), tmp_path / "state"


def applied(env: tuple[Keystore, Path], text: str = MESH) -> tuple[Mesh, list[str]]:
    store, state_dir = env
    secrets = [fixed_key(store, "g", n) for n in ("a", "b", "c")]
    mesh = load_mesh_text(text)
    apply_mesh(mesh, store, state_dir, FakeTarget())
    return mesh, secrets


def plan_of(env: tuple[Keystore, Path], text: str) -> Plan:
    store, state_dir = env
    mesh = load_mesh_text(text)
    return compute_plan(mesh, store, load_state(state_dir, mesh.mesh.name))


def test_golden_create_with_unknown_key(env: tuple[Keystore, Path]) -> None:
    store, _ = env
    fixed_key(store, "g", "a")
    fixed_key(store, "g", "b")
    plan = plan_of(env, MESH)
    assert plan.summary == {"add": 4, "change": 0, "replace": 0, "destroy": 0}
    text = plan_text(plan)
    assert "crypto.public-key = (known after apply)" in text  # c has no key yet
    golden("plan_create.txt", text)


def test_golden_change_is_a_reload(env: tuple[Keystore, Path]) -> None:
    applied(env)
    plan = plan_of(env, MESH.replace("claims: [10.6.0.0/24]", "claims: [10.6.0.0/24, 10.7.0.0/24]").replace(
        "peer_timeout: 300", "peer_timeout: 600"
    ))  # fmt: skip
    assert {c.address: c.action for c in plan.changes} == {
        "node.a": "update",
        "node.b": "update",
        "node.c": "update",
    }
    golden("plan_change.txt", plan_text(plan))


def test_golden_drift_section_comes_first_and_becomes_changes(env: tuple[Keystore, Path]) -> None:
    store, state_dir = env
    applied(env)
    mesh = load_mesh_text(MESH.replace("claims: [10.6.0.0/24]", "claims: [10.6.0.0/24, 10.7.0.0/24]"))
    drift = [
        Drift(address="node.b", reason="daemon not running", action="replace"),
        Drift(address="node.c", reason="config edited outside vpncloud", action="replace"),
    ]
    plan = compute_plan(mesh, store, load_state(state_dir, "g"), refresh=Refresh(drift=drift))
    # c's pending reload becomes the restart that also repairs it; b is restarted for the drift alone.
    assert {c.address: (c.action, c.reason) for c in plan.changes} == {
        "node.b": ("replace", "daemon not running"),
        "node.c": ("replace", "config edited outside vpncloud"),
    }
    assert plan.model_dump(mode="json")["drift"][0] == {
        "address": "node.b",
        "reason": "daemon not running",
        "action": "replace",
    }
    offline = compute_plan(mesh, store, load_state(state_dir, "g"), refresh=Refresh(skipped="-refresh=false"))
    assert plan.inputs_hash != offline.inputs_hash  # a saved plan is stale once reality changes
    golden("plan_drift.txt", plan_text(plan))
    lab_down = Refresh(drift=[Drift(address="lab.g", reason="lab not running", action="create")])
    golden(
        "plan_lab_down.txt",
        plan_text(compute_plan(load_mesh_text(MESH), store, load_state(state_dir, "g"), refresh=lab_down)),
    )


def test_golden_replace_when_port_changes(env: tuple[Keystore, Path]) -> None:
    applied(env)
    text = MESH.replace("    underlay: 192.0.2.1\n", "    underlay: 192.0.2.1\n    overrides: {port: 4000}\n")
    plan = plan_of(env, text)
    actions = {c.address: c.action for c in plan.changes}
    assert actions == {"node.a": "replace", "node.b": "update", "node.c": "update"}
    listen = next(a for a in plan.changes[0].attributes if a.name == "listen")
    assert listen.forces_replacement and (listen.before, listen.after) == ("3210", "4000")
    golden("plan_replace.txt", plan_text(plan))


def test_golden_mode_and_device_changes_force_replacement(env: tuple[Keystore, Path]) -> None:
    applied(env)
    plan = plan_of(env, MESH.replace("  name: g\n", "  name: g\n  mode: switch\n  device_type: tap\n"))
    assert plan.summary["replace"] == 3
    names = {a.name for a in plan.changes[0].attributes if a.forces_replacement}
    assert names == {"mode", "device.type"}


def test_golden_destroy_removes_the_key_from_every_trust_list(env: tuple[Keystore, Path]) -> None:
    store, _ = env
    applied(env)
    b_public = store.get("g", "b")
    assert b_public is not None
    text = MESH.replace("  - name: b\n    host: hb\n    underlay: 192.0.2.2\n    vpn_address: 10.5.0.2\n", "")
    plan = plan_of(env, text)
    actions = {c.address: c.action for c in plan.changes}
    assert actions == {"node.a": "update", "node.b": "delete", "node.c": "update", "hosts.g": "update"}
    rendered = plan_text(plan)
    assert f'- "{b_public.public_key}",' in rendered  # revoked everywhere
    golden("plan_destroy.txt", rendered)


def test_golden_rotation_phases(env: tuple[Keystore, Path]) -> None:
    store, state_dir = env
    mesh, _ = applied(env)
    rotation = compute_rotation(mesh, store, load_state(state_dir, "g"), "a")
    assert [len(p.plan.changes) for p in rotation.phases] == [3, 1, 3]
    # phase 2 only restarts the rotating node; phases 1 and 3 only reload
    assert [c.action for c in rotation.phases[1].plan.changes] == ["replace"]
    assert {c.action for p in (rotation.phases[0], rotation.phases[2]) for c in p.plan.changes} == {"update"}
    golden("plan_rotation.txt", lines_text(rotation_lines(rotation)))


def test_rotation_apply_runs_phases_in_order_and_converges(env: tuple[Keystore, Path]) -> None:
    store, state_dir = env
    mesh, _ = applied(env)
    old = store.get("g", "a")
    target = FakeTarget()
    apply_rotation(mesh, store, state_dir, target, "a")
    assert target.calls == [
        [("node.a", "update"), ("node.b", "update"), ("node.c", "update")],
        [("node.a", "replace")],
        [("node.a", "update"), ("node.b", "update"), ("node.c", "update")],
    ]
    assert target.health_checks == 3
    # a target that renders on its own (Ansible) is told which phase each rollout is
    assert target.rotations == [("a", 1), ("a", 2), ("a", 3)]
    new = store.get("g", "a")
    assert old is not None and new is not None and new.public_key != old.public_key
    assert not compute_plan(mesh, store, load_state(state_dir, "g")).has_changes
    assert load_state(state_dir, "g").rotation is None


def test_interrupted_rotation_resumes(env: tuple[Keystore, Path]) -> None:
    store, state_dir = env
    mesh, _ = applied(env)
    failing = FakeTarget()
    calls = 0

    def deploy_then_fail(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ApplyError("node a: step restart: simulated failure")

    failing.deploy = deploy_then_fail  # type: ignore[method-assign,assignment]
    with pytest.raises(ApplyError):
        apply_rotation(mesh, store, state_dir, failing, "a")
    state = load_state(state_dir, "g")
    assert state.rotation is not None and state.rotation.phase == 1
    nxt = store.get("g", "a", next_key=True)
    target = FakeTarget()
    apply_rotation(mesh, store, state_dir, target, "a")
    assert [[a for a, _ in call] for call in target.calls] == [["node.a"], ["node.a", "node.b", "node.c"]]
    assert store.get("g", "a") == nxt  # the key created by the interrupted run was kept
    assert not compute_plan(mesh, store, load_state(state_dir, "g")).has_changes


def test_golden_password_mode_warns(env: tuple[Keystore, Path]) -> None:
    text = MESH.replace("  name: g\n", "  name: g\n  auth: password\n  password: correct-horse\n")
    plan = plan_of(env, text)
    assert [w.kind for w in plan.warnings] == ["weak-password"]
    rendered = plan_text(plan)
    assert "correct-horse" not in rendered and "crypto.password = (sensitive value)" in rendered
    golden("plan_password.txt", rendered)


def test_unreachable_pair_and_overlap_warnings(env: tuple[Keystore, Path]) -> None:
    text = MESH.replace("  - name: a\n", "  - name: a\n    groups: [x]\n").replace(
        "  - name: b\n", "  - name: b\n    groups: [y]\n"
    )
    text += "  - name: d\n    host: hd\n    behind_nat: true\n    groups: [y]\n    vpn_address: 10.5.0.4\n"
    text += "    claims: [10.6.0.128/25]\n"
    text = text.replace(
        "    behind_nat: true\n    vpn_address: 10.5.0.3\n",
        "    behind_nat: true\n    groups: [x]\n    vpn_address: 10.5.0.3\n",
    )
    plan = plan_of(env, text)
    kinds = sorted(w.kind for w in plan.warnings)
    assert kinds == ["overlapping-claims", "unreachable-pair"]
    assert any("c and d are both behind NAT" in w.message for w in plan.warnings)


def test_no_secret_ever_in_plan_json_state_or_saved_plan(
    env: tuple[Keystore, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, state_dir = env
    text = MESH + "beacons:\n  store: /tmp/{node}.beacon\n  password: beacon-pw-123\n"
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(text)
    secrets = [fixed_key(store, "g", n) for n in ("a", "b", "c")] + ["beacon-pw-123"]
    common = ["--state-dir", str(state_dir), "--keystore", str(store.root), "--no-color"]
    outputs = []
    assert main(["plan", str(mesh_file), *common, "-out", str(tmp_path / "p.json")]) == 0
    outputs.append(capsys.readouterr().out)
    assert main(["plan", str(mesh_file), *common, "--json"]) == 0
    outputs.append(capsys.readouterr().out)
    apply_mesh(load_mesh_text(text), store, state_dir, FakeTarget())
    changed = text.replace("beacon-pw-123", "beacon-pw-456")
    mesh_file.write_text(changed)
    assert main(["plan", str(mesh_file), *common]) == 0
    out = capsys.readouterr().out
    assert "beacon.password = (sensitive value) -> (sensitive value)" in out
    outputs.append(out)
    outputs.append((tmp_path / "p.json").read_text())
    outputs.append((state_dir / "g.state.json").read_text())
    blob = "\n".join(outputs)
    assert "(sensitive value)" in blob
    for secret in [*secrets, "beacon-pw-456"]:
        assert secret not in blob


def test_cli_detailed_exitcode_json_and_stale_saved_plan(
    env: tuple[Keystore, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, state_dir = env
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(MESH)
    common = ["--state-dir", str(state_dir), "--keystore", str(store.root), "--no-color"]
    assert main(["plan", str(mesh_file), *common, "--detailed-exitcode"]) == 2
    out = capsys.readouterr().out
    assert out.rstrip().endswith("Plan: 4 to add, 0 to change, 0 to replace, 0 to destroy.")
    assert main(["plan", str(mesh_file), *common, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"] == {"add": 4, "change": 0, "replace": 0, "destroy": 0}
    assert main(["plan", str(mesh_file), *common, "-out", str(tmp_path / "p.json")]) == 0
    capsys.readouterr()
    saved = Plan.model_validate_json((tmp_path / "p.json").read_text())
    # The plan's inputs change (another apply happened): apply FILE must refuse it.
    apply_mesh(load_mesh_text(MESH), store, state_dir, FakeTarget())
    with pytest.raises(ApplyError, match="stale"):
        apply_mesh(load_mesh_text(MESH), store, state_dir, FakeTarget(), expected_hash=saved.inputs_hash)
    assert main(["plan", str(mesh_file), *common, "--detailed-exitcode"]) == 0
    assert "No changes." in capsys.readouterr().out
    # a fresh saved plan of an unchanged mesh applies (nothing to do) ...
    assert main(["plan", str(mesh_file), *common, "-out", str(tmp_path / "q.json")]) == 0
    fresh = Plan.model_validate_json((tmp_path / "q.json").read_text())
    apply_mesh(load_mesh_text(MESH), store, state_dir, FakeTarget(), expected_hash=fresh.inputs_hash)
    # ... but not once the mesh file changed
    mesh_file.write_text(MESH.replace("peer_timeout: 300", "peer_timeout: 301"))
    capsys.readouterr()
    assert main(["apply", str(tmp_path / "q.json"), *common, "--target", "ansible"]) == 1
    assert "stale" in capsys.readouterr().err


def test_cli_errors_are_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MESH.replace("vpn_address: 10.5.0.2", "vpn_adress: 10.5.0.2"))
    assert (
        main(["plan", str(bad), "--state-dir", str(tmp_path / "s"), "--keystore", str(tmp_path / "k")]) == 1
    )
    err = capsys.readouterr().err
    assert f"error: {bad}:13: nodes[1].vpn_adress: unknown key 'vpn_adress'" in err
    assert "Traceback" not in err


def test_bad_underlay_is_refused_by_plan_and_apply_before_anything_is_rendered(
    env: tuple[Keystore, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, state_dir = env
    applied(env)
    before = sorted(p.read_bytes() for p in state_dir.rglob("*") if p.is_file())
    bad = tmp_path / "bad.yaml"
    bad.write_text(MESH.replace("underlay: 192.0.2.2", "underlay: 10.98.0.300"))
    common = ["--state-dir", str(state_dir), "--keystore", str(store.root)]
    for argv in (["plan", str(bad), "-out", str(tmp_path / "p.plan")], ["apply", str(bad)]):
        assert main([*argv, *common]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"error: {bad}:12: nodes[1].underlay: "
            "10.98.0.300 is not a valid IPv4 address (four numbers 0-255)"
        ]
    assert not (tmp_path / "p.plan").exists()
    assert sorted(p.read_bytes() for p in state_dir.rglob("*") if p.is_file()) == before


def test_saved_plans_and_mesh_files_are_told_apart_by_content_not_name(
    env: tuple[Keystore, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, state_dir = env
    applied(env)
    applies: list[str | None] = []
    monkeypatch.setattr(cli, "apply_mesh", lambda *args, **kw: applies.append(kw["expected_hash"]))
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(MESH.replace("  - name: c\n", "  - name: d\n"))
    common = ["--state-dir", str(state_dir), "--keystore", str(store.root), "--no-color"]
    assert main(["plan", str(mesh_file), *common, "-out", str(tmp_path / "remove-d.plan")]) == 0
    assert "vpncloud apply " + str(tmp_path / "remove-d.plan") in capsys.readouterr().out
    saved = Plan.model_validate_json((tmp_path / "remove-d.plan").read_text())
    assert main(["apply", str(tmp_path / "remove-d.plan"), *common]) == 0
    assert applies == [saved.inputs_hash]
    # a mesh description written as JSON under a .json name is still a mesh description
    as_json = tmp_path / "mesh.json"
    as_json.write_text(json.dumps(yaml.safe_load(MESH)))
    assert main(["apply", str(as_json), *common]) == 0
    assert applies[1:] == [None]
    # and a saved plan given to plan says where it belongs
    assert main(["plan", str(tmp_path / "remove-d.plan"), *common]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path / 'remove-d.plan'} is a saved plan, not a mesh description: "
        f"use `vpncloud apply {tmp_path / 'remove-d.plan'}`"
    ]


def test_ansible_target_without_collection_fails(env: tuple[Keystore, Path], tmp_path: Path) -> None:
    from vpncloud.mesh.apply import AnsibleTarget

    store, state_dir = env
    with pytest.raises(ApplyError, match="step deploy: no Ansible collection under"):
        apply_mesh(load_mesh_text(MESH), store, state_dir, AnsibleTarget(tmp_path))


def test_interrupted_apply_converges_without_new_keys(env: tuple[Keystore, Path]) -> None:
    store, state_dir = env
    mesh = load_mesh_text(MESH)
    with pytest.raises(ApplyError, match="node a: step restart"):
        apply_mesh(mesh, store, state_dir, FakeTarget(fail=True))
    keys = {n: store.get("g", n) for n in ("a", "b", "c")}
    assert all(keys.values())  # keys exist before any config was deployed
    assert not load_state(state_dir, "g").resources  # nothing recorded as applied
    target = FakeTarget()
    apply_mesh(mesh, store, state_dir, target)
    assert {n: store.get("g", n) for n in ("a", "b", "c")} == keys
    assert target.calls and len(target.calls[0]) == 4
    assert not compute_plan(mesh, store, load_state(state_dir, "g")).has_changes
    configs = sorted(p.name for p in (state_dir / "g").glob("*.net"))
    assert configs == ["a.net", "b.net", "c.net"]
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in (state_dir / "g").glob("*.net"))


def test_lost_keystore_is_refused_not_regenerated(env: tuple[Keystore, Path]) -> None:
    store, state_dir = env
    mesh, _ = applied(env)
    store.path("g", "b").unlink()
    with pytest.raises(PlanError, match=r"'b'.*missing from the keystore"):
        compute_plan(mesh, store, load_state(state_dir, "g"))
    with pytest.raises(PlanError):
        apply_mesh(mesh, store, state_dir, FakeTarget())
    assert store.get("g", "b") is None


def test_rotation_refused_with_pending_changes(env: tuple[Keystore, Path]) -> None:
    store, state_dir = env
    applied(env)
    changed = load_mesh_text(MESH.replace("peer_timeout: 300", "peer_timeout: 400"))
    with pytest.raises(PlanError, match="pending changes"):
        compute_rotation(changed, store, load_state(state_dir, "g"), "a")
    with pytest.raises(PlanError, match="unknown node"):
        compute_rotation(changed, store, load_state(state_dir, "g"), "zz")


def test_entry_points_module_and_top_level_dispatch(tmp_path: Path) -> None:
    import subprocess
    import sys

    from vpncloud.mesh.cli import mesh_schema

    out = subprocess.run(
        [sys.executable, "-m", "vpncloud.mesh.cli", "schema", "-o", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == mesh_schema()
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(MESH)
    args = ["plan", str(mesh_file), "--state-dir", str(tmp_path / "s"), "--keystore", str(tmp_path / "k")]
    res = subprocess.run(
        [sys.executable, "-m", "vpncloud", *args, "--no-color", "--detailed-exitcode"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2, res.stderr
    assert "Plan: 4 to add, 0 to change, 0 to replace, 0 to destroy." in res.stdout
    assert not (tmp_path / "k").exists()  # plan never writes keys


def test_removed_node_leaves_no_rendered_files_and_its_key_is_archived(
    env: tuple[Keystore, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, state_dir = env
    applied(env)
    assert (state_dir / "g" / "b.net").exists()
    # A retired key left by an earlier rotation (e.g. by the Ansible keystore module).
    fixed_key(store, "g", "spare")
    os.replace(store.path("g", "spare"), store.root / "g" / "a.retired.key")
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(
        MESH.replace("  - name: b\n    host: hb\n    underlay: 192.0.2.2\n    vpn_address: 10.5.0.2\n", "")
    )
    common = ["--state-dir", str(state_dir), "--keystore", str(store.root), "--no-color"]
    assert main(["plan", str(mesh_file), *common, "--detailed-exitcode", "-refresh=false"]) == 2
    out = capsys.readouterr().out
    assert "# key of removed node b will be archived: b.key" in out
    assert "# retired key of a (replaced by a rotation) will be archived: a.retired.key" in out
    apply_mesh(load_mesh_text(mesh_file.read_text()), store, state_dir, FakeTarget())
    assert not (state_dir / "g" / "b.net").exists()
    archived = sorted(
        p.relative_to(store.root / "g").parts[2:] for p in (store.root / "g" / "archive").rglob("*.key")
    )
    assert archived == [("a.retired.key",), ("b.key",)]
    assert store.get("g", "b") is None and store.get("g", "a") is not None
    # Only the retired key moved: a still has its own key, and nothing is left to do.
    assert (
        compute_plan(load_mesh_text(mesh_file.read_text()), store, load_state(state_dir, "g")).has_changes
        is False
    )


def test_replace_and_destroy_on_the_command_line(
    env: tuple[Keystore, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, state_dir = env
    applied(env)
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(MESH)
    common = ["--state-dir", str(state_dir), "--keystore", str(store.root), "--no-color"]
    plan = ["plan", str(mesh_file), *common, "--detailed-exitcode", "-refresh=false"]
    assert main([*plan, "-replace", "a"]) == 2
    out = capsys.readouterr().out
    assert "# node.a must be replaced (restart): replacement requested" in out
    assert "Plan: 0 to add, 0 to change, 1 to replace, 0 to destroy." in out
    assert main([*plan, "-replace", "zz"]) == 1
    assert "no node 'zz'" in capsys.readouterr().err
    # Without a terminal and without -auto-approve, destroy refuses and removes nothing.
    assert main(["destroy", str(mesh_file), *common, "--lab-dir", str(tmp_path / "lab")]) == 1
    err = capsys.readouterr().err
    assert "destroy needs confirmation" in err and "-auto-approve" in err
    assert (state_dir / "g" / "a.net").exists() and store.get("g", "a") is not None


def test_ansible_refresh_reads_the_hosts_and_shows_an_unreachable_one_as_drift(
    env: tuple[Keystore, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vpncloud.mesh.state import save_state

    store, state_dir = env
    applied(env)
    save_state(state_dir, load_state(state_dir, "g").model_copy(update={"target": "ansible"}))
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(MESH)
    # Every host over SSH to a closed port of this machine: refused at once, nothing leaves the host.
    inventory = tmp_path / "hosts.yml"
    hosts = {
        h: {"ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_user": "nobody"}
        for h in ("ha", "hb", "hc")
    }
    inventory.write_text(json.dumps({"all": {"children": {"vpncloud_nodes": {"hosts": hosts}}}}))
    common = ["--state-dir", str(state_dir), "--keystore", str(store.root), "--no-color"]
    target = ["--target", "ansible", "--inventory", str(inventory)]
    # Not "no changes": Ansible could not read the hosts, and the plan says so, node by node.
    assert main(["plan", str(mesh_file), *common, *target, "--detailed-exitcode"]) == 2
    out = capsys.readouterr().out
    assert "Objects have changed outside of vpncloud" in out
    for node, host in (("a", "ha"), ("b", "hb"), ("c", "hc")):
        assert f"# node.{node} has changed outside vpncloud: host {host} unreachable:" in out
    assert main(["plan", str(mesh_file), *common, *target, "--json"]) == 0
    drift = json.loads(capsys.readouterr().out)["drift"]
    assert sorted(d["address"] for d in drift) == ["node.a", "node.b", "node.c"]
    # -refresh=false plans offline, from the recorded state only.
    assert main(["plan", str(mesh_file), *common, *target, "-refresh=false", "--detailed-exitcode"]) == 0


def test_destroy_on_a_terminal_asks_and_only_yes_destroys(env: tuple[Keystore, Path], tmp_path: Path) -> None:
    import shlex
    import shutil
    import subprocess
    import sys

    if shutil.which("script") is None:
        pytest.skip("needs script(1) for a pseudo-terminal")
    store, state_dir = env
    applied(env)
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text(MESH)
    argv = [sys.executable, "-m", "vpncloud", "destroy", str(mesh_file), "--state-dir", str(state_dir),
            "--keystore", str(store.root), "--lab-dir", str(tmp_path / "lab"), "--no-color"]  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])

    def answer(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["script", "-qec", shlex.join(argv), "/dev/null"],
            input=text,
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=root),
            timeout=60,
            check=False,
        )

    res = answer("no\n")
    assert res.returncode == 1, res.stdout
    assert "Only 'yes' is accepted" in res.stdout and "Destroy cancelled." in res.stdout
    assert (state_dir / "g" / "a.net").exists() and store.get("g", "a") is not None
    res = answer("yes\n")
    assert res.returncode == 0 and "Destroy complete." in res.stdout, res.stdout
    assert not (state_dir / "g").exists() and store.get("g", "a") is None
    assert sorted(p.name for p in (store.root / "g").glob("archive/*/*.key")) == ["a.key", "b.key", "c.key"]


def test_golden_relay_paths_and_per_node_relay_settings(env: tuple[Keystore, Path]) -> None:
    # c and d behind NAT reach a and b (public: relays by default); b is told not to relay, e not to
    # use relays, f shares no public node with the others.
    text = MESH.replace("    underlay: 192.0.2.2\n", "    underlay: 192.0.2.2\n    relay: false\n")
    text += "  - {name: d, host: hd, behind_nat: true, vpn_address: 10.5.0.4}\n"
    text += "  - {name: e, host: he, behind_nat: true, use_relays: false, vpn_address: 10.5.0.5}\n"
    plan = plan_of(env, text)
    paths = [(w.kind, w.message) for w in plan.warnings]
    assert paths == [
        ("relay-path", "c ↔ d via a (both behind NAT: when hole punching fails)"),
        ("no-relay", "c, d ↔ e: no relay available (both behind NAT: only hole punching connects them)"),
    ]
    created = {c.address: {a.name: a.after for a in c.attributes} for c in plan.changes}
    relay = {n: sorted(k for k in attrs if k.startswith("relay.")) for n, attrs in created.items()}
    assert relay["node.a"] == ["relay.offer"]
    assert relay["node.b"] == []  # relay: false
    assert relay["node.c"] == relay["node.d"] == ["relay.use"]
    assert relay["node.e"] == []  # use_relays: false
    golden("plan_relay.txt", plan_text(plan))


def test_relay_use_change_restarts_relay_offer_change_reloads(env: tuple[Keystore, Path]) -> None:
    text = MESH + "  - {name: d, host: hd, behind_nat: true, vpn_address: 10.5.0.4}\n"
    store, state_dir = env
    for n in ("a", "b", "c", "d"):
        fixed_key(store, "g", n)
    apply_mesh(load_mesh_text(text), store, state_dir, FakeTarget())
    changed = text.replace("    underlay: 192.0.2.2\n", "    underlay: 192.0.2.2\n    relay: false\n")
    changed = changed.replace("vpn_address: 10.5.0.4}", "vpn_address: 10.5.0.4, use_relays: false}")
    plan = plan_of(env, changed)
    actions = {c.address: (c.action, [a.name for a in c.attributes]) for c in plan.changes}
    assert actions["node.b"] == ("update", ["relay.offer"])
    assert actions["node.d"] == ("replace", ["relay.use"])
    assert "node.c" not in actions  # still uses a (and no longer b): same relay section


def test_rotation_keeps_key_expiry_in_the_security_files(env: tuple[Keystore, Path]) -> None:
    from vpncloud.daemon.security_file import load_security_file

    store, state_dir = env
    mesh, _ = applied(env, MESH + "key_expiry:\n  b: 2027-02-01\n")
    b_key = base62.decode(store.get("g", "b").public_key)  # type: ignore[union-attr]
    security = state_dir / "g" / "a.security.yaml"
    assert b_key in load_security_file(security).key_expiry

    phases: list[set[bytes]] = []

    class Recording(FakeTarget):
        def deploy(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            phases.append(set(load_security_file(security).key_expiry))

    apply_rotation(mesh, store, state_dir, Recording(), "a")
    # every phase rolled out with b's expiry in a's security file, and it is still there after
    assert phases == [{b_key}, {b_key}, {b_key}]
    assert b_key in load_security_file(security).key_expiry
