"""A running lab's mesh as a Graphviz graph (``vpncloud lab status LAB --dot FILE``).

Nodes are the lab's nodes; a black edge is a session both ends report, a blue dotted edge one that
goes through a relay (issue 22), labelled "via R", a red dashed edge a link that should exist and does
not (every node of a lab should reach every other, as ``whole`` means), labelled with the side that is
missing it. ``FILE.svg`` is rendered too when ``dot`` is installed.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

from vpncloud.daemon.control import relayed_peers

from .lab import LabStatus

__all__ = ["lab_dot", "write_dot"]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def lab_dot(status: LabStatus) -> str:
    """The DOT text of ``status`` (deterministic: nodes and edges in lab order)."""
    lines = [
        f"graph {_quote('lab ' + status.name)} {{",
        f"  label={_quote(f'lab {status.name}: ' + ('whole' if status.whole else 'NOT whole'))};",
        "  node [shape=box, style=rounded];",
    ]
    for n in status.nodes:
        label = "\n".join(x for x in (n.name, n.vpn_ip, (n.node_id or "")[:8]) if x)
        up = n.running and not n.error
        colour = "" if up else ", color=red, fontcolor=red"
        lines.append(f"  {_quote(n.name)} [label={_quote(label)}{colour}];")
    sees = {n.name: {p.name for p in n.peers if p.name} for n in status.nodes}
    ids = {str(n.node_id): n.name for n in status.nodes if n.node_id}
    # (a, b) -> relay name, as either end reports it
    via: dict[tuple[str, str], str] = {}
    for n in status.nodes:
        for peer, relay in relayed_peers(n.daemon).items():
            other = ids.get(peer)
            if other is not None:
                via[(n.name, other)] = via[(other, n.name)] = ids.get(relay, relay[:8])
    for a, b in itertools.combinations([n.name for n in status.nodes], 2):
        missing = [x for x, y in ((a, b), (b, a)) if y not in sees[x]]
        if not missing:
            through = via.get((a, b))
            style = (
                f" [color=blue, style=dotted, fontcolor=blue, label={_quote('via ' + through)}]"
                if through
                else ""
            )
            lines.append(f"  {_quote(a)} -- {_quote(b)}{style};")
            continue
        why = "missing" if len(missing) == 2 else f"{missing[0]} lacks it"
        lines.append(
            f"  {_quote(a)} -- {_quote(b)} [color=red, style=dashed, fontcolor=red, label={_quote(why)}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(status: LabStatus, path: Path) -> list[Path]:
    """Write the DOT file, and ``<path>.svg`` when Graphviz's ``dot`` is on the PATH; the written paths."""
    path.write_text(lab_dot(status))
    written = [path]
    dot = shutil.which("dot")
    if dot is not None:
        svg = path.with_name(path.name + ".svg")
        subprocess.run([dot, "-Tsvg", "-o", str(svg), str(path)], check=True, capture_output=True)
        written.append(svg)
    return written
