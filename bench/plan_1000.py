"""Benchmark: plan a generated 1,000-node mesh (not a test; prints timings).

    .venv/bin/python bench/plan_1000.py [--nodes 1000] [--public 50]

Generates keys into a temporary keystore (so public keys are known, like after a first apply), then
times loading/validation, the first plan (everything to create), and a plan against applied state
with one changed node (the common case).
"""

from __future__ import annotations

import argparse
import ipaddress
import tempfile
import time
from pathlib import Path

import yaml

from vpncloud.mesh.apply import apply_mesh
from vpncloud.mesh.keystore import Keystore
from vpncloud.mesh.loader import load_mesh_text
from vpncloud.mesh.models import Mesh
from vpncloud.mesh.plan import ResourceChange, compute_plan, plan_text
from vpncloud.mesh.render import RenderedNode
from vpncloud.mesh.state import load_state


def generate(nodes: int, public: int) -> str:
    """A mesh description with ``public`` reachable relays and the rest behind NAT."""
    network = ipaddress.IPv4Network("10.0.0.0/16")
    data = {
        "mesh": {"name": "bench", "vpn_network": str(network)},
        "nodes": [
            {
                "name": f"n{i}",
                "host": f"host{i}.example.net",
                "vpn_address": str(network.network_address + i + 1),
                **({"underlay": f"198.51.{i // 250}.{i % 250 + 1}"} if i < public else {"behind_nat": True}),
            }
            for i in range(nodes)
        ],
    }
    return yaml.safe_dump(data, sort_keys=False)


class NullTarget:
    name = "null"

    def deploy(
        self, mesh: Mesh, rendered: dict[str, RenderedNode], changes: list[ResourceChange], progress: object
    ) -> None:
        pass

    def wait_healthy(self, mesh: Mesh, progress: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--public", type=int, default=50)
    args = parser.parse_args()
    text = generate(args.nodes, args.public)
    with tempfile.TemporaryDirectory() as tmp:
        store, state_dir = Keystore(Path(tmp) / "keys"), Path(tmp) / "state"
        t0 = time.perf_counter()
        mesh = load_mesh_text(text, "generated")
        t1 = time.perf_counter()
        for node in mesh.nodes:
            store.ensure("bench", node.name)
        t2 = time.perf_counter()
        plan = compute_plan(mesh, store, load_state(state_dir, "bench"))
        rendered = plan_text(plan)
        t3 = time.perf_counter()
        apply_mesh(mesh, store, state_dir, NullTarget())
        t4 = time.perf_counter()
        changed = load_mesh_text(
            text.replace("vpn_address: 10.0.0.2\n", "vpn_address: 10.0.0.2\n  claims: [172.16.0.0/24]\n")
        )
        plan2 = compute_plan(changed, store, load_state(state_dir, "bench"))
        t5 = time.perf_counter()
    print(f"nodes: {args.nodes} ({args.public} public)")
    print(f"load + validate:        {t1 - t0:7.2f} s")
    print(f"generate keys:          {t2 - t1:7.2f} s")
    print(f"first plan + render:    {t3 - t2:7.2f} s  ({plan.summary}, {len(rendered) // 1024} KiB of text)")
    print(f"apply (null target):    {t4 - t3:7.2f} s  (writes {args.nodes} configs and the state)")
    print(f"plan after one change:  {t5 - t4:7.2f} s  ({plan2.summary})")


if __name__ == "__main__":
    main()
