"""Relay benchmark (run as root; not a test): relayed TCP throughput next to direct (issue 22).

    .venv/bin/python bench/relay.py [--seconds 5] [--rounds 3]

Five real daemons on one switch (10.130.0.0/24): r offers relaying; a, b, c and d use relays (so all
four have the same, relay-lowered MTU). iptables in a and b drops UDP between them, so a and b talk
through r; c and d talk directly. iperf3 a -> b (relayed) and c -> d (direct) alternate, ``--rounds``
times each; the table gives the medians and the relay's CPU seconds per relayed GB. The relay's caps
are raised for the measurement (the defaults, 1 MB/s per pair, would be the result otherwise).

All traffic stays in namespaces this script creates; they are removed at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.security import iperf  # noqa: E402
from vpncloud.daemon.control import ControlError, request  # noqa: E402
from vpncloud.lab.netns import Netns, Topology  # noqa: E402

PY = sys.executable
NAMES = ("r", "a", "b", "c", "d")


def numbered(prefix: str) -> dict[str, str]:
    """An address per node name: ``prefix.1`` for the first, and so on."""
    return {name: f"{prefix}.{i + 1}" for i, name in enumerate(NAMES)}


UNDERLAY = numbered("10.130.0")
VPN = numbered("10.131.0")
CLK = os.sysconf("SC_CLK_TCK")


def until(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def node_status(sock: Path) -> dict[str, Any] | None:
    try:
        reply = request(str(sock), timeout=2.0)
    except ControlError:
        return None
    return reply.get("status") if reply.get("ok") else None


def relayed_ids(sock: Path) -> set[str]:
    st = node_status(sock) or {}
    return {e["node_id"] for e in (st.get("relay") or {}).get("relayed_peers", [])}


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def on_one_switch(topo: Topology, underlay: dict[str, str]) -> dict[str, Netns]:
    """A namespace per name, all on one switch, with its underlay address (/24) and default route."""
    sw = topo.switch("sw")
    ns: dict[str, Netns] = {}
    for name, addr in underlay.items():
        ns[name] = topo.namespace(name)
        topo.plug(ns[name], sw)
        ns[name].add_addr("eth0", f"{addr}/24")
        ns[name].add_default_route("eth0")
    return ns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    (tmp / "offer.yaml").write_text("relay: {offer: true, pair_rate: 10000000000, total_rate: 10000000000}\n")
    (tmp / "use.yaml").write_text("relay: {use: true}\n")
    topo = Topology()
    try:
        ns = on_one_switch(topo, UNDERLAY)
        procs = {}
        for x, y in (("a", "b"), ("b", "a")):
            ns[x].iptables("-A", "INPUT", "-s", UNDERLAY[y], "-p", "udp", "-j", "DROP")
        for name in NAMES:
            sec = tmp / ("offer.yaml" if name == "r" else "use.yaml")
            cmd = [PY, "-m", "vpncloud", "--no-port-forwarding", "-p", "bench-relay", "--keepalive", "10",
                   "--ip", f"{VPN[name]}/24", "--security-file", str(sec), "--control-socket",
                   str(tmp / f"{name}.sock"), "--log-file", str(tmp / f"{name}.log")]  # fmt: skip
            if name != "r":
                cmd += ["-c", f"{UNDERLAY['r']}:3210"]
            procs[name] = topo.spawn(ns[name], cmd)
        ids = {n: until(lambda n=n: node_status(tmp / f"{n}.sock"), 30, n)["node_id"] for n in NAMES}
        until(lambda: ids["b"] in relayed_ids(tmp / "a.sock"), 180, "a and b relayed")
        until(lambda: ns["c"].ping(VPN["d"]) and not relayed_ids(tmp / "c.sock"), 60, "c and d direct")
        for server in ("b", "d"):
            topo.spawn(ns[server], ["iperf3", "-s", "-B", VPN[server]])
        until(lambda: ns["a"].ping(VPN["b"]), 30, "a pings b")
        time.sleep(1)  # iperf3 servers bind (a benchmark, not a test)
        relayed, direct, relay_cpu, relay_mbit = [], [], 0.0, 0.0
        for _ in range(args.rounds):
            before = cpu(procs["r"].pid)
            mbit = iperf(ns["a"], VPN["b"], args.seconds)
            relay_cpu += cpu(procs["r"].pid) - before
            relay_mbit += mbit
            relayed.append(mbit)
            direct.append(iperf(ns["c"], VPN["d"], args.seconds))
        gbytes = relay_mbit * args.seconds / 8 / 1000
        print(f"{'path':<10}{'median Mbit/s':>15}{'runs':>30}")
        print(f"{'direct':<10}{statistics.median(direct):>15.1f}{[round(x) for x in direct]!s:>30}")
        print(f"{'relayed':<10}{statistics.median(relayed):>15.1f}{[round(x) for x in relayed]!s:>30}")
        print(f"relay CPU: {relay_cpu / gbytes:.1f} s per relayed GB ({relay_cpu:.1f} s for {gbytes:.2f} GB)")
    finally:
        topo.close()


if __name__ == "__main__":
    main()
