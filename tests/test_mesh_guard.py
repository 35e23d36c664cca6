"""mesh.yaml's ``handshake_guard`` block: validation shared with the daemon, rendering, plan (issue 24)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from test_mesh_plan import MESH, FakeTarget, env, fixed_key, plan_of  # noqa: F401 - env is a fixture

from vpncloud.config import Config, ConfigError, build_node_config, load_config_text
from vpncloud.core.guard import GuardConfig
from vpncloud.mesh.apply import apply_mesh
from vpncloud.mesh.keystore import Keystore
from vpncloud.mesh.loader import MeshError, load_mesh_text
from vpncloud.mesh.models import HandshakeGuard, effective_settings
from vpncloud.mesh.plan import plan_text
from vpncloud.mesh.render import KeyView, config_text, render_node

DEFAULTS = (
    "  defaults:\n    handshake_guard: {max_pending: 64, global_rate: 50.5, amplification_budget: false}\n"
)


def with_guard(defaults: str = DEFAULTS, node_a: str = "") -> str:
    text = MESH.replace("  timers: {peer_timeout: 300}\n", "  timers: {peer_timeout: 300}\n" + defaults)
    if node_a:
        text = text.replace("    vpn_address: 10.5.0.1\n", f"    vpn_address: 10.5.0.1\n{node_a}")
    return text


def rendered_config(text: str, node: str) -> dict[str, object]:
    mesh = load_mesh_text(text)
    target = next(n for n in mesh.nodes if n.name == node)
    keys = KeyView({n.name: None for n in mesh.nodes}, {n.name: "k" for n in mesh.nodes}, [])  # type: ignore[misc]
    loaded = yaml.safe_load(config_text(mesh, render_node(mesh, target, keys)))
    assert isinstance(loaded, dict)
    return loaded


def test_the_model_has_exactly_the_daemons_keys() -> None:
    assert list(HandshakeGuard.model_fields) == [f.name for f in dataclasses.fields(GuardConfig)]


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        ("{max_pendin: 3}", "unknown key 'max_pendin'; did you mean 'max_pending'"),
        ("{per_source_burst: 0.5}", "per_source_burst"),  # a burst is at least one message
        ("{max_sources: 0}", "max_sources"),
        ("{global_rate: 0}", "global_rate"),
        ("{replay_ttl: .inf}", "replay_ttl"),
        ("{budget_ttl: '30'}", "budget_ttl"),  # strict, as the daemon's reader
        ("{amplification_budget: 1}", "amplification_budget"),
        ("{max_pending: 2.5}", "max_pending"),
    ],
)
def test_bad_values_are_errors_naming_the_key(block: str, fragment: str) -> None:
    for text in (with_guard(f"  defaults:\n    handshake_guard: {block}\n"), with_guard(
        "", f"    overrides:\n      handshake_guard: {block}\n"
    )):  # fmt: skip
        with pytest.raises(MeshError, match=fragment):
            load_mesh_text(text)


def test_what_the_daemon_refuses_the_model_refuses_and_the_other_way_round() -> None:
    for name in HandshakeGuard.model_fields:
        for value in (0, 0.5, 1, 2.5):
            field_type = HandshakeGuard.model_fields[name].annotation
            if field_type == bool | None or (field_type == int | None and isinstance(value, float)):
                continue
            try:
                GuardConfig(**{name: value})
                daemon_ok = True
            except ValueError:
                daemon_ok = False
            try:
                HandshakeGuard.model_validate({name: value})
                model_ok = True
            except ValueError:
                model_ok = False
            assert daemon_ok == model_ok, (name, value)


def test_node_overrides_merge_key_by_key_and_only_differences_are_rendered() -> None:
    text = with_guard(node_a="    overrides:\n      handshake_guard: {max_pending: 8, per_source_rate: 10}\n")
    mesh = load_mesh_text(text)
    guard = effective_settings(mesh, mesh.nodes[0]).handshake_guard
    assert guard is not None and (guard.max_pending, guard.global_rate) == (8, 50.5)
    a = rendered_config(text, "a")["handshake-guard"]
    # per_source_rate 10 is the default: not written, so restating a default changes no config
    assert a == {"global-rate": 50.5, "amplification-budget": False, "max-pending": 8}
    assert rendered_config(text, "b")["handshake-guard"] == {
        "global-rate": 50.5,
        "amplification-budget": False,
        "max-pending": 64,
    }


def test_the_rendered_section_is_what_the_daemon_reads() -> None:
    text = with_guard(
        "  defaults:\n    handshake_guard: {per_source_rate: 0.00001, budget_ttl: 1500.5, max_sources: 7}\n"
    )
    mesh = load_mesh_text(text)
    keys = KeyView({n.name: None for n in mesh.nodes}, {n.name: "k" for n in mesh.nodes}, [])  # type: ignore[misc]
    body = config_text(mesh, render_node(mesh, mesh.nodes[0], keys))
    assert "per-source-rate: 1.0e-05" in body  # PyYAML reads "1e-05" as a string
    c = Config()
    c.merge(load_config_text(body))
    c.validate()
    guard = build_node_config(c, port=1).guard
    assert (guard.per_source_rate, guard.budget_ttl, guard.max_sources) == (0.00001, 1500.5, 7)
    assert guard.global_rate == GuardConfig().global_rate


def test_without_the_block_or_with_only_defaults_nothing_is_written() -> None:
    assert "handshake-guard" not in rendered_config(MESH, "a")
    restated = with_guard(
        "  defaults:\n    handshake_guard: {max_pending: 256, amplification_budget: true}\n"
    )
    assert "handshake-guard" not in rendered_config(restated, "a")


def test_existing_meshes_plan_no_change_and_restating_defaults_neither(env: tuple[Keystore, Path]) -> None:  # noqa: F811
    store, state_dir = env
    for n in ("a", "b", "c"):
        fixed_key(store, "g", n)
    apply_mesh(load_mesh_text(MESH), store, state_dir, FakeTarget())
    assert plan_of(env, MESH).changes == []
    restated = with_guard("  defaults:\n    handshake_guard: {max_pending: 256}\n")
    assert plan_of(env, restated).changes == []


def test_a_changed_limit_restarts_that_node_only(env: tuple[Keystore, Path]) -> None:  # noqa: F811
    store, state_dir = env
    secrets = [fixed_key(store, "g", n) for n in ("a", "b", "c")]
    apply_mesh(load_mesh_text(MESH), store, state_dir, FakeTarget())
    text = with_guard("", "    overrides:\n      handshake_guard: {max_pending_per_host: 2}\n")
    plan = plan_of(env, text)
    # the daemon keeps its running guard on SIGHUP (it would forget the budgets it tracks): restart
    assert {c.address: (c.action, [a.name for a in c.attributes]) for c in plan.changes} == {
        "node.a": ("replace", ["handshake-guard.max-pending-per-host"])
    }
    out = plan_text(plan)
    assert "handshake-guard.max-pending-per-host" in out and "must be replaced" in out
    for secret in secrets:
        assert secret not in out
    apply_mesh(load_mesh_text(text), store, state_dir, FakeTarget())
    changed = plan_of(env, text.replace("max_pending_per_host: 2", "max_pending_per_host: 3"))
    assert [(c.address, c.action) for c in changed.changes] == [("node.a", "replace")]
    assert "2 -> 3" in plan_text(changed)


def test_the_daemon_config_error_and_the_model_name_the_same_key() -> None:
    with pytest.raises(ConfigError, match=r"handshake-guard\.global-burst: must be at least 1"):
        c = Config()
        c.merge(load_config_text("handshake-guard: {global-burst: 0.5}\n"))
        c.validate()
    with pytest.raises(MeshError, match="global_burst"):
        load_mesh_text(with_guard("  defaults:\n    handshake_guard: {global_burst: 0.5}\n"))
