#!/usr/bin/env python3
"""Idle memory of a node: VmRSS and VmHWM of a daemon after the handshake, no traffic (issue 21).

Two daemons (TUN, router mode, one peer each) start in network namespaces; once both see the other
in ``status``, the script waits a few seconds for start-up work to settle and reads ``VmRSS`` and
``VmHWM`` from /proc/PID/status of each. Every tree given is measured with the C kernels and with
``VPNCLOUD_PURE_PYTHON=1``, the trees and paths interleaved pass by pass; the table shows medians.

The baseline is another checkout (e.g. ``git worktree add /tmp/rss-base 10f6d7b``) run with the same
interpreter and packages; copy or build its ``vpncloud/fastpath/_kernels*.so`` (``python setup.py
build_ext --inplace`` in that checkout) or its C rows show the Python path. Run as root::

    .venv/bin/python bench/rss.py --tree base=/tmp/rss-base --tree ours=. [--passes 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vpncloud.daemon.control import status_or_none  # noqa: E402
from vpncloud.lab.netns import Topology  # noqa: E402

PASSWORD = "rss-bench"
SETTLE = 3.0  # seconds after the handshake: the first NODE_INFO, route sync and stats write are done


def proc_status(pid: int) -> dict[str, int]:
    """The Vm* lines of /proc/PID/status in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def measure(tree: Path, pure: bool, tmp: Path, settle: float = SETTLE) -> list[dict[str, int]]:
    """Start a pair from ``tree``, wait for the handshake, return the Vm* figures of both daemons."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
    }
    env.pop("VPNCLOUD_PURE_PYTHON", None)
    if pure:
        env["VPNCLOUD_PURE_PYTHON"] = "1"
    with Topology() as topo:
        addrs = {"a": "10.201.0.1", "b": "10.201.0.2"}
        nss = {n: topo.node(n, f"{ip}/24") for n, ip in addrs.items()}
        procs, socks = {}, {}
        for i, name in enumerate(addrs, start=1):
            socks[name] = str(tmp / f"{topo.prefix}{name}.sock")
            args = [sys.executable, "-m", "vpncloud", "--no-port-forwarding", "--control-socket", socks[name]]
            args += ["-m", "router", "-p", PASSWORD, "--ip", f"10.100.0.{i}/24"]
            if name == "b":
                args += ["-c", f"{addrs['a']}:3210"]
            procs[name] = topo.spawn(
                nss[name], args, env=env, cwd=str(tree), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 60
        while True:
            sts = [status_or_none(s) for s in socks.values()]
            if all(st and st.get("peers") for st in sts):
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                raise SystemExit(f"{tree}: the pair did not connect")
            time.sleep(0.1)
        time.sleep(settle)
        return [proc_status(p.pid) for p in procs.values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout (repeatable)")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--settle", type=float, default=SETTLE, help="seconds idle after the handshake")
    args = ap.parse_args()
    trees = [(t.partition("=")[0], Path(t.partition("=")[2]).resolve()) for t in args.tree] or [
        ("ours", ROOT)
    ]
    results: dict[tuple[str, str], list[dict[str, int]]] = {}
    for p in range(args.passes):
        for name, tree in trees:
            for path in ("c", "python"):
                figures = measure(tree, path == "python", Path(args.tmp), args.settle)
                results.setdefault((name, path), []).extend(figures)
                rss = ", ".join(f"{f['VmRSS'] / 1024:.1f}" for f in figures)
                print(f"pass {p + 1} {name:>8} {path:>6}: VmRSS {rss} MiB", file=sys.stderr)
    print("| tree | kernels | VmRSS MiB | VmHWM MiB | RssAnon MiB | RssFile MiB | n |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (name, path), figs in results.items():
        med = {k: statistics.median(f[k] for f in figs) / 1024 for k in figs[0]}
        print(
            f"| {name} | {path} | {med['VmRSS']:.1f} | {med['VmHWM']:.1f} | {med['RssAnon']:.1f} "
            f"| {med['RssFile']:.1f} | {len(figs)} |"
        )


if __name__ == "__main__":
    main()
