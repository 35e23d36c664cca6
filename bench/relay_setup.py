"""Relay setup benchmark (run as root; not a test): seconds until two ends are relayed, with the
plan's knowledge (``at_once``) next to without (``direct_grace``, 20 s) in the same run (issue 22).

    .venv/bin/python bench/relay_setup.py [--rounds 3]

One switch (10.132.0.0/24): r offers relaying; a and b use relays with ``at_once``, c and d without.
iptables drops UDP between a and b and between c and d, so both pairs need r. Each round starts all
five daemons afresh (the two pairs at the same moment, so they share the machine's noise) and times
each pair from the start of its daemons to both ends listing the other as relayed.

All traffic stays in namespaces this script creates; they are removed at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.relay import NAMES, PY, node_status, numbered, on_one_switch, relayed_ids, until  # noqa: E402
from vpncloud.lab.netns import Topology  # noqa: E402

UNDERLAY = numbered("10.132.0")
VPN = numbered("10.133.0")
SECURITY = {"r": "offer.yaml", "a": "at_once.yaml", "b": "at_once.yaml", "c": "use.yaml", "d": "use.yaml"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-relay-setup-"))
    (tmp / "offer.yaml").write_text("relay: {offer: true}\n")
    (tmp / "at_once.yaml").write_text("relay: {use: true, at_once: true}\n")
    (tmp / "use.yaml").write_text("relay: {use: true}\n")
    topo = Topology()
    try:
        ns = on_one_switch(topo, UNDERLAY)
        for x, y in (("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")):
            ns[x].iptables("-A", "INPUT", "-s", UNDERLAY[y], "-p", "udp", "-j", "DROP")
        times: dict[str, list[float]] = {"at_once": [], "grace": []}
        for rnd in range(args.rounds):
            procs = []
            for name in NAMES:
                cmd = [PY, "-m", "vpncloud", "--no-port-forwarding", "-p", "bench-relay", "--keepalive", "10",
                       "--ip", f"{VPN[name]}/24", "--security-file", str(tmp / SECURITY[name]),
                       "--control-socket", str(tmp / f"{name}{rnd}.sock"),
                       "--log-file", str(tmp / f"{name}{rnd}.log")]  # fmt: skip
                if name != "r":
                    cmd += ["-c", f"{UNDERLAY['r']}:3210"]
                procs.append(topo.spawn(ns[name], cmd))
            start = time.monotonic()
            ids = {
                n: until(lambda n=n, rnd=rnd: node_status(tmp / f"{n}{rnd}.sock"), 30, n)["node_id"]
                for n in NAMES
            }

            def relayed(x: str, y: str, rnd: int = rnd, ids: dict[str, str] = ids) -> bool:
                return ids[y] in relayed_ids(tmp / f"{x}{rnd}.sock") and ids[x] in relayed_ids(
                    tmp / f"{y}{rnd}.sock"
                )

            pending = {"at_once": ("a", "b"), "grace": ("c", "d")}
            while pending:
                for key, (x, y) in list(pending.items()):
                    if relayed(x, y):
                        times[key].append(time.monotonic() - start)
                        del pending[key]
                if time.monotonic() - start > 120:
                    raise RuntimeError(f"not relayed within 120 s: {sorted(pending)}")
                time.sleep(0.2)
            for p in procs:
                p.terminate()
                p.wait()
        print(f"{'setup':<10}{'median s':>10}{'runs (s)':>30}")
        for key, values in times.items():
            print(f"{key:<10}{statistics.median(values):>10.1f}{[round(v, 1) for v in values]!s:>30}")
    finally:
        topo.close()


if __name__ == "__main__":
    main()
