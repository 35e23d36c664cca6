"""``vpncloud lab up|down|status FILE``: command line and rich rendering for :mod:`vpncloud.lab.lab`.

``vpncloud/cli.py`` dispatches ``vpncloud lab ...`` to :func:`main` with the arguments after ``lab``;
``python -m vpncloud.lab ...`` works too. ``FILE`` is a lab file; ``down`` and ``status`` also accept a
bare lab name. Exit codes: 0 = ok (mesh whole, every ping answered), 1 = the lab is up but not whole
or a ping failed, 2 = error (bad file, missing daemon, node died, not up).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.table import Table

from vpncloud.lab.dot import write_dot
from vpncloud.lab.lab import LabError, LabStatus, lab_down, lab_status, lab_up, load_spec, node_status
from vpncloud.sourcefile import print_errors, usage_error

__all__ = ["build_parser", "main", "render"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        usage_error(self, message, 2)


def build_parser() -> argparse.ArgumentParser:
    """The ``vpncloud lab`` argument parser."""
    p = _Parser(prog="vpncloud lab", description="Run a VpnCloud mesh in local network namespaces.")
    p.add_argument("--state-dir", type=Path, default=None, help="state root (default /run/vpncloud-lab)")
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    up = sub.add_parser(
        "up",
        help="build the namespaces, start the nodes, wait until the mesh is whole",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build one network namespace per node of a lab file (original-format node configs)\n"
        "on a shared bridge, start the nodes and wait until every node sees every other (as root).",
        epilog="example:\n  vpncloud lab up inventories/lab/lab.yaml --timeout 90",
    )
    up.add_argument("file", help="lab file (YAML)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the mesh (default 60)")
    for name, text, description in (
        (
            "down",
            "stop the nodes, delete namespaces and state",
            "Stop the nodes of a lab, delete its namespaces and state; nothing to do is no error.",
        ),
        (
            "status",
            "show a running lab",
            "Show the nodes of a running lab, their peers and a ping matrix over the VPN.",
        ),
    ):
        sp = sub.add_parser(
            name,
            help=text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description=description,
            epilog=f"examples:\n  vpncloud lab {name} inventories/lab/lab.yaml\n  vpncloud lab {name} lab",
        )
        sp.add_argument("file", help="lab file (YAML) or lab name")
    sub.choices["status"].add_argument("--no-ping", action="store_true", help="skip the ping matrix")
    sub.choices["status"].add_argument(
        "--dot",
        type=Path,
        metavar="FILE",
        help="also write the mesh as Graphviz DOT (and FILE.svg with `dot`)",
    )
    sub.choices["status"].add_argument(
        "node", nargs="?", help="one node: its full status, as 'vpncloud status' shows it"
    )
    return p


def _name_of(arg: str) -> str:
    path = Path(arg)
    if path.is_file() or arg.endswith((".yaml", ".yml")):
        return load_spec(path).name
    return arg


def render(status: LabStatus, console: Console) -> None:
    """Print the node table and the ping matrix."""
    names = {n.name for n in status.nodes}
    table = Table(title=f"lab {status.name} — {'whole' if status.whole else 'NOT whole'}")
    # Addresses must stay readable on an 80-column terminal; the long namespace name may fold.
    table.add_column("node", no_wrap=True)
    table.add_column("pid", no_wrap=True)
    table.add_column("underlay", no_wrap=True)
    table.add_column("vpn ip", no_wrap=True)
    table.add_column("node id", no_wrap=True)
    table.add_column("peers")
    table.add_column("state")
    table.add_column("namespace", overflow="fold")
    for n in status.nodes:
        seen = sorted({p.name or p.addr for p in n.peers})
        missing = sorted(names - {n.name} - {p.name for p in n.peers if p.name})
        peers = ", ".join(seen) + (f" [red](missing {', '.join(missing)})[/red]" if missing else "")
        state = "[green]running[/green]" if n.running and not n.error else f"[red]{n.error or 'down'}[/red]"
        table.add_row(
            n.name,
            str(n.pid or "-"),
            n.underlay + (f"\n{n.underlay6}" if n.underlay6 else ""),
            n.vpn_ip or "-",
            (n.node_id or "-")[:8],
            peers or "-",
            state,
            n.namespace,
        )
    console.print(table)
    # Where to point "vpncloud status --socket" (inside a node's namespace it finds it by itself).
    for n in status.nodes:
        console.print(f"control socket of {n.name}: {n.socket}", highlight=False, soft_wrap=True)
    if status.ping:
        matrix = Table(title="ping: row -> column VPN IP")
        matrix.add_column("from \\ to")
        cols = [n.name for n in status.nodes]
        for c in cols:
            matrix.add_column(c, justify="center")
        for src in cols:
            row = status.ping.get(src, {})
            cells = []
            for dst in cols:
                v = row.get(dst) if dst != src else None
                cells.append(
                    "·"
                    if dst == src
                    else "[green]ok[/green]"
                    if v
                    else "-"
                    if v is None
                    else "[red]FAIL[/red]"
                )
            matrix.add_row(src, *cells)
        console.print(matrix)


def _one_node(name: str, node: str, state_dir: Path | None, out: Console) -> int:
    from vpncloud.daemon.control import print_status

    entry, data = node_status(name, node, state_dir)
    out.print(
        f"lab {name} node {node}: pid {entry.pid}, namespace {entry.namespace}\n"
        f"control socket: {entry.socket}",
        highlight=False,
        soft_wrap=True,
    )
    print_status(data)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vpncloud lab`` with ``argv`` (the arguments after ``lab``); returns the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    out = Console()
    err = Console(stderr=True)
    try:
        if args.action == "up":
            spec = load_spec(args.file)
            status = lab_up(spec, args.state_dir, timeout=args.timeout)
            render(status, out)
            return 0 if status.whole and status.ping_ok else 1
        name = _name_of(args.file)
        if args.action == "down":
            removed = lab_down(name, args.state_dir)
            out.print(f"lab {name}: {'removed' if removed else 'nothing to remove'}")
            return 0
        if args.node:
            return _one_node(name, args.node, args.state_dir, out)
        status = lab_status(name, args.state_dir, ping=not args.no_ping)
        render(status, out)
        if args.dot is not None:
            out.print("wrote " + ", ".join(str(p) for p in write_dot(status, args.dot)))
        return 0 if status.whole and (args.no_ping or status.ping_ok) else 1
    except LabError as e:
        print_errors(err, e.errors)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
