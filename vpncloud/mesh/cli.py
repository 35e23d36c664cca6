"""``vpncloud plan|apply|rotate|schema``: the orchestrator's command line.

Exit statuses follow terraform: 0 success (with ``--detailed-exitcode``: no changes), 1 error, 2
changes present (``--detailed-exitcode`` only). Every error is one readable message on stderr, never
a traceback, and never contains key material.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from vpncloud.sourcefile import file_kind, print_errors, usage_error

from .apply import (
    AnsibleTarget,
    ApplyError,
    LabTarget,
    Target,
    apply_mesh,
    apply_rotation,
    destroy_mesh,
    refresh_target,
)
from .keystore import Keystore, KeystoreError
from .loader import MeshError, load_meshes
from .models import Mesh, MeshFile
from .plan import (
    Plan,
    PlanError,
    Refresh,
    compute_destroy,
    compute_plan,
    compute_rotation,
    print_lines,
    print_plan,
    rotation_lines,
)
from .state import MeshState, StateError, load_state

__all__ = ["main", "mesh_schema"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2

DEFAULT_STATE_DIR = ".vpncloud/state"
DEFAULT_KEYSTORE = ".vpncloud/keys"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "mesh.schema.json"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        usage_error(self, message, EXIT_ERROR)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("VPNCLOUD_STATE_DIR", DEFAULT_STATE_DIR)),
        help=f"Applied state and rendered configs (default $VPNCLOUD_STATE_DIR or {DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--keystore",
        type=Path,
        default=Path(os.environ.get("VPNCLOUD_KEYSTORE", DEFAULT_KEYSTORE)),
        help=f"Key directory (default $VPNCLOUD_KEYSTORE or {DEFAULT_KEYSTORE})",
    )
    p.add_argument("--no-color", action="store_true", help="Plain output")


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        choices=("lab", "ansible"),
        default=None,
        help="Where to deploy (default: the target of the last apply, else lab)",
    )
    p.add_argument("--lab-dir", type=Path, default=None, help="Lab state root (default: the lab's own)")
    p.add_argument("--timeout", type=float, default=60.0, help="Seconds to wait for a healthy mesh")
    p.add_argument(
        "--inventory",
        type=Path,
        action="append",
        default=None,
        help="Ansible inventory, repeatable (target ansible; default: generated from the mesh)",
    )
    p.add_argument(
        "--ansible-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="Extra argument for ansible-playbook (repeatable), e.g. --ansible-arg=--check",
    )


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _refresh_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--refresh",
        "-refresh",
        type=_bool,
        default=True,
        metavar="BOOL",
        help="Read what runs on the target before planning (default true; false for offline plans)",
    )


def _replace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-replace",
        "--replace",
        action="append",
        default=[],
        metavar="NODE",
        help="Restart NODE with a fresh render even if nothing changed (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Parser of the four subcommands."""
    p = _Parser(prog="vpncloud", description="Declarative VpnCloud mesh orchestration")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    plan = sub.add_parser(
        "plan",
        help="Show what apply would change",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare mesh description(s) with the applied state and the keystore and show what\n"
        "apply would create, change, replace or destroy. Nothing is changed. Several files are\n"
        "checked against each other (ports and mesh names per host).",
        epilog="examples:\n"
        "  vpncloud plan inventories/lab/mesh.yaml\n"
        "  vpncloud plan mesh.yaml -out next.plan     # then: vpncloud apply next.plan\n"
        "  vpncloud plan mesh.yaml --detailed-exitcode  # exit 2 when there are changes",
    )
    plan.add_argument("mesh", nargs="+", type=Path, help="mesh.yaml file(s)")
    _common(plan)
    plan.add_argument("--json", action="store_true", help="Print the plan as JSON")
    plan.add_argument(
        "--detailed-exitcode", "-detailed-exitcode", action="store_true", help="Exit 2 when there are changes"
    )
    plan.add_argument("-out", "--out", type=Path, help="Save the plan for 'apply FILE' (one mesh only)")
    _target_args(plan)
    _refresh_arg(plan)
    _replace_arg(plan)

    apply = sub.add_parser(
        "apply",
        help="Apply a mesh file or a saved plan",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make the nodes match the mesh description: create missing keys, render and deploy\n"
        "the configs, restart or reload the nodes and wait until the mesh is healthy. Given a plan\n"
        "saved with 'plan -out' (any file name), apply exactly that plan, or refuse it when stale.",
        epilog="examples:\n"
        "  vpncloud apply inventories/lab/mesh.yaml\n"
        "  vpncloud apply next.plan\n"
        "  vpncloud apply inventories/fleet/mesh.yaml --target ansible --ansible-arg=--check",
    )
    apply.add_argument("source", type=Path, help="mesh.yaml or a plan saved with plan -out")
    _common(apply)
    _target_args(apply)
    _refresh_arg(apply)
    _replace_arg(apply)

    destroy = sub.add_parser(
        "destroy",
        help="Remove everything the mesh made on its target",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Plan the removal of everything the mesh made on its target (the lab, or the\n"
        "nodes on the fleet's hosts through Ansible), then ask for 'yes' on a terminal or take\n"
        "-auto-approve. Rendered configs are removed; keys move to a dated archive in the keystore.",
        epilog="examples:\n"
        "  vpncloud destroy inventories/lab/mesh.yaml\n"
        "  vpncloud destroy inventories/lab/mesh.yaml -auto-approve",
    )
    destroy.add_argument("mesh", type=Path, help="mesh.yaml")
    _common(destroy)
    _target_args(destroy)
    destroy.add_argument(
        "-auto-approve", "--auto-approve", action="store_true", help="Destroy without asking for 'yes'"
    )

    rotate = sub.add_parser(
        "rotate",
        help="Plan (and with --apply run) a phased key rotation",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rotate one node's key in three phases (trust the new key everywhere, switch the\n"
        "node to it, drop the old key) so the mesh never loses a link. Without --apply only the\n"
        "phases are shown.",
        epilog="examples:\n"
        "  vpncloud rotate inventories/lab/mesh.yaml b\n"
        "  vpncloud rotate inventories/lab/mesh.yaml b --apply",
    )
    rotate.add_argument("mesh", type=Path, help="mesh.yaml")
    rotate.add_argument("node", help="Node whose key rotates")
    _common(rotate)
    _target_args(rotate)
    rotate.add_argument(
        "--apply", action="store_true", help="Run the phases, waiting for health between them"
    )
    rotate.add_argument("--json", action="store_true", help="Print the rotation plan as JSON")

    status = sub.add_parser(
        "status",
        help="Health of an applied mesh: nodes and who is connected to whom",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read every node of an applied mesh (the lab, or the fleet's hosts through\n"
        "Ansible) and show per node health and a matrix of who is connected to whom against\n"
        "what the mesh expects. Exits 1 when the mesh is not whole, so it can gate a rollout.",
        epilog="examples:\n"
        "  vpncloud status inventories/lab/mesh.yaml\n"
        "  vpncloud status inventories/lab/mesh.yaml --json",
    )
    status.add_argument("mesh", type=Path, help="mesh.yaml")
    _common(status)
    _target_args(status)
    status.add_argument("--json", action="store_true", help="Print the status as JSON")

    schema = sub.add_parser(
        "schema",
        help="Write the JSON Schema of mesh.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write the JSON Schema of the mesh description, generated from the models that\n"
        "validate it; editors use it for completion and checks.",
        epilog="examples:\n"
        "  vpncloud schema                # writes schemas/mesh.schema.json\n"
        "  vpncloud schema -o - | less",
    )
    schema.add_argument("-o", "--output", type=Path, default=SCHEMA_PATH, help="Output file ('-' = stdout)")
    return p


def mesh_schema() -> str:
    """The JSON Schema of mesh.yaml, as written to schemas/mesh.schema.json."""
    schema = MeshFile.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def _target(ns: argparse.Namespace, state: MeshState | None, mesh_file: str) -> Target:
    # Refresh must read where the mesh was applied, so the last apply's target is the default.
    recorded = state.target if state is not None and state.target in ("lab", "ansible") else None
    if (ns.target or recorded) == "ansible":
        target = AnsibleTarget(
            state_dir=ns.state_dir, keystore=ns.keystore, inventory=ns.inventory, extra_args=ns.ansible_arg
        )
        target.mesh_file = mesh_file  # every play reads the mesh as the rollout does
        return target
    lab_dir = ns.lab_dir or (Path(state.lab_dir) if state is not None and state.lab_dir else None)
    return LabTarget(lab_dir, timeout=ns.timeout)


def _consoles(ns: argparse.Namespace) -> tuple[Console, Console]:
    no_color = bool(getattr(ns, "no_color", False)) or "NO_COLOR" in os.environ
    return Console(no_color=no_color, highlight=False), Console(
        stderr=True, no_color=no_color, highlight=False
    )


def _plan(ns: argparse.Namespace, out: Console) -> int:
    meshes = load_meshes(ns.mesh)
    keystore = Keystore(ns.keystore)
    plans: list[Plan] = []
    for path, mesh in zip(ns.mesh, meshes, strict=True):
        state = load_state(ns.state_dir, mesh.mesh.name)
        found = _refresh(ns, _target(ns, state, str(path)), mesh, state, keystore)
        plans.append(
            compute_plan(mesh, keystore, state, mesh_file=str(path), refresh=found, replace=ns.replace)
        )
    if ns.out is not None:
        if len(plans) != 1:
            raise PlanError("-out saves the plan of exactly one mesh file")
        ns.out.write_text(plans[0].model_dump_json(indent=2) + "\n", encoding="utf-8")
    if ns.json:
        data = [p.model_dump(mode="json") for p in plans]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    else:
        for plan in plans:
            print_plan(plan, out)
        if ns.out is not None:
            # soft_wrap: a wrapped command line cannot be copied and pasted
            out.print(f"\nSaved the plan to {ns.out}. To perform exactly these actions, run:\n"
                      f"    vpncloud apply {ns.out}", highlight=False, soft_wrap=True)  # fmt: skip
    if ns.detailed_exitcode and any(p.has_changes for p in plans):
        return EXIT_CHANGES
    return EXIT_OK


def _refresh(
    ns: argparse.Namespace, target: Target, mesh: Mesh, state: MeshState, keystore: Keystore
) -> Refresh:
    if not ns.refresh:
        return Refresh(skipped="-refresh=false: compared with the recorded state only")
    if ns.target is None and state.target not in (None, "lab", "ansible"):
        return Refresh(skipped=f"applied with target {state.target!r}, which cannot be read from here")
    return refresh_target(target, mesh, state, keystore)


def _load_source(source: Path) -> tuple[Mesh, str, str | None]:
    """A mesh file, or a saved plan pointing at one: (mesh, mesh file, expected inputs hash).

    Which of the two is judged by content, not by name: ``plan -out`` takes any file name.
    """
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = None  # not JSON, so not a saved plan; the mesh loader says what is wrong with it
    if file_kind(data) != "plan":
        return load_meshes([source])[0], str(source), None
    try:
        saved = Plan.model_validate(data)
    except ValueError:
        raise PlanError(f"{source}: not a valid saved plan (made by another version?)") from None
    if not saved.mesh_file:
        raise PlanError(f"{source}: the saved plan does not name its mesh file")
    return load_meshes([saved.mesh_file])[0], saved.mesh_file, saved.inputs_hash


def _apply(ns: argparse.Namespace, out: Console) -> int:
    try:
        mesh, mesh_file, expected = _load_source(ns.source)
    except MeshError:
        raise
    state = load_state(ns.state_dir, mesh.mesh.name)
    target = _target(ns, state, mesh_file)
    found = _refresh(ns, target, mesh, state, Keystore(ns.keystore))
    replace = list(ns.replace)
    if expected is None:
        plan = compute_plan(
            mesh, Keystore(ns.keystore), state, mesh_file=mesh_file, refresh=found, replace=replace
        )
        print_plan(plan, out)
    else:
        replace = _saved_replacements(ns.source) + replace
    apply_mesh(
        mesh,
        Keystore(ns.keystore),
        ns.state_dir,
        target,
        expected_hash=expected,
        progress=lambda msg: out.print(f"[bold]>[/bold] {msg}", highlight=False),
        mesh_file=mesh_file,
        refresh=found,
        replace=replace,
    )
    out.print("Apply complete.", style="bold green", highlight=False)
    return EXIT_OK


def _saved_replacements(source: Path) -> list[str]:
    # A saved plan made with -replace must replace the same nodes when applied.
    try:
        return list(json.loads(source.read_text(encoding="utf-8")).get("replace") or [])
    except (OSError, ValueError, AttributeError):
        return []


def _destroy(ns: argparse.Namespace, out: Console) -> int:
    mesh = load_meshes([ns.mesh])[0]
    keystore = Keystore(ns.keystore)
    state = load_state(ns.state_dir, mesh.mesh.name)
    target = _target(ns, state, str(ns.mesh))
    print_plan(compute_destroy(mesh, keystore, state, target=target.name), out)
    if not ns.auto_approve:
        if not sys.stdin.isatty():
            raise PlanError("destroy needs confirmation: run it on a terminal or pass -auto-approve")
        out.print(f"\nDo you really want to destroy mesh {mesh.mesh.name!r}? Only 'yes' is accepted.")
        if input("  Enter a value: ").strip() != "yes":
            out.print("Destroy cancelled.", highlight=False)
            return EXIT_ERROR
    destroy_mesh(
        mesh,
        keystore,
        ns.state_dir,
        target,
        progress=lambda msg: out.print(f"[bold]>[/bold] {msg}", highlight=False),
    )
    out.print("Destroy complete.", style="bold green", highlight=False)
    return EXIT_OK


def _status(ns: argparse.Namespace, out: Console) -> int:
    from vpncloud.lab.lab import LabError

    from .status import fleet_mesh_status, lab_mesh_status, print_mesh_status

    mesh = load_meshes([ns.mesh])[0]
    state = load_state(ns.state_dir, mesh.mesh.name)
    target = _target(ns, state, str(ns.mesh))
    if isinstance(target, AnsibleTarget):
        status = fleet_mesh_status(mesh, Keystore(ns.keystore), target.facts(mesh))
    elif isinstance(target, LabTarget):
        try:
            status = lab_mesh_status(mesh, Keystore(ns.keystore), target.lab_dir)
        except LabError as exc:
            raise PlanError(f"status: {exc}") from None
    else:
        raise PlanError(f"status: the {target.name} target cannot be read")
    if ns.json:
        print(json.dumps(status.model_dump(mode="json") | {"whole": status.whole}, indent=2))
    else:
        print_mesh_status(status, out)
    return EXIT_OK if status.whole else EXIT_ERROR


def _rotate(ns: argparse.Namespace, out: Console) -> int:
    mesh = load_meshes([ns.mesh])[0]
    keystore = Keystore(ns.keystore)
    rotation = compute_rotation(mesh, keystore, load_state(ns.state_dir, mesh.mesh.name), ns.node)
    if ns.json:
        print(rotation.model_dump_json(indent=2))
    else:
        print_lines(rotation_lines(rotation), out)
    if ns.apply:
        apply_rotation(
            mesh,
            keystore,
            ns.state_dir,
            _target(ns, load_state(ns.state_dir, mesh.mesh.name), str(ns.mesh)),
            ns.node,
            progress=lambda msg: out.print(f"[bold]>[/bold] {msg}", highlight=False),
        )
        out.print("Rotation complete.", style="bold green", highlight=False)
    return EXIT_OK


def _schema(ns: argparse.Namespace) -> int:
    text = mesh_schema()
    if str(ns.output) == "-":
        sys.stdout.write(text)
    else:
        ns.output.parent.mkdir(parents=True, exist_ok=True)
        ns.output.write_text(text, encoding="utf-8")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``plan``, ``apply``, ``rotate`` or ``schema``; returns the exit status."""
    ns = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    out, err = _consoles(ns)
    try:
        if ns.command == "plan":
            return _plan(ns, out)
        if ns.command == "apply":
            return _apply(ns, out)
        if ns.command == "rotate":
            return _rotate(ns, out)
        if ns.command == "destroy":
            return _destroy(ns, out)
        if ns.command == "status":
            return _status(ns, out)
        return _schema(ns)
    except MeshError as exc:
        print_errors(err, [str(item) for item in exc.items])
    except (PlanError, ApplyError, KeystoreError, StateError) as exc:
        print_errors(err, [str(exc)])
    except OSError as exc:
        print_errors(err, [f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror or exc)])
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
