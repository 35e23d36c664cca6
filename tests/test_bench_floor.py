"""bench/floor.py (the least-Python T2 reference of the benchmark) really tunnels: pings and TCP
both ways, i.e. super-packet slices one way and single-frame ACKs the other."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from test_dataplane_netns import tcp_transfer

from vpncloud.lab.netns import Topology

FLOOR = Path(__file__).resolve().parent.parent / "bench" / "floor.py"


def test_floor_loop_moves_pings_and_tcp_both_ways(topology: Topology, tmp_path: Path) -> None:
    a = topology.namespace("a")
    b = topology.namespace("b")
    topology.veth(a, "eth0", b, "eth0")
    a.add_addr("eth0", "10.230.0.1/24")
    b.add_addr("eth0", "10.230.0.2/24")
    procs = [
        ns.popen(
            [sys.executable, str(FLOOR), f"10.231.0.{i}/24", f"10.230.0.{3 - i}"], stderr=subprocess.PIPE
        )
        for i, ns in ((1, a), (2, b))
    ]
    topology.processes.extend(procs)
    deadline = time.monotonic() + 20
    while not a.ping("10.231.0.2", count=1, timeout=0.5):
        assert all(p.poll() is None for p in procs), "floor.py exited"
        assert time.monotonic() < deadline, "no ping through the floor tunnel"
    tcp_transfer(a, b, "10.231.0.2", tmp_path, 3_000_000, 1)
    tcp_transfer(b, a, "10.231.0.1", tmp_path, 1_000_000, 2)
