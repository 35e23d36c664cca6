#!/usr/bin/env python3
"""CPU cost of a handshake (issue 21): PING, PONG and PENG between two in-process cores, no sockets.

One handshake is what two nodes compute to connect: two X25519 keys and exchanges, three Ed25519
signatures and three verifications, the session's AEAD keys, the message codec. Each measurement
is a child process running ``--count`` handshakes (``time.process_time``, CPU not wall clock); the
trees and kernels given alternate round by round, so the machine's noise falls on all alike. Prints
the median and min over ``--rounds`` of µs of CPU per handshake::

    .venv/bin/python bench/handshake.py --tree base=/tmp/base --tree ours=. [--rounds 7] [--count 300]

A tree is a checkout (its ``vpncloud`` is imported); each runs with the C kernels and with
``VPNCLOUD_PURE_PYTHON=1`` (a tree from before the kernels did the handshake runs cryptography both times).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
    import random, sys, time
    from vpncloud.core.handshake import AlgorithmList, Handshake
    from vpncloud.core.identity import Identity
    from vpncloud.core.primitives import Algorithm
    from vpncloud import fastpath
    ident = Identity.from_config(password="bench")
    algs = AlgorithmList.build([(Algorithm.AES128, 600.0), (Algorithm.CHACHA20, 400.0)], False)
    rng = random.Random(1)

    def one():
        a, ping = Handshake.initiator(ident, b"A" * 16, b"info-a", algs, rng)
        b = Handshake(ident, b"B" * 16, b"info-b", algs, rng)
        pong = b.handle(ping).reply
        step = a.handle(pong)
        assert b.handle(step.reply).session is not None

    for _ in range(20):  # warm-up: imports, caches
        one()
    start = time.process_time()
    for _ in range(COUNT):
        one()
    print((time.process_time() - start) / COUNT * 1e6, fastpath.KERNELS, "cryptography" in sys.modules)
"""


def measure(tree: Path, pure: bool, count: int) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "VPNCLOUD_PURE_PYTHON": "1" if pure else "0"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD).replace("COUNT", str(count))],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=str(tree),
    ).stdout.split()
    return float(out[0]), f"{out[1]}, cryptography {'loaded' if out[2] == 'True' else 'not loaded'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout (repeatable)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--count", type=int, default=300, help="handshakes per measurement")
    args = ap.parse_args()
    trees = [(t.partition("=")[0], Path(t.partition("=")[2]).resolve()) for t in args.tree] or [
        ("ours", ROOT)
    ]
    results: dict[tuple[str, str], list[float]] = {}
    notes: dict[tuple[str, str], str] = {}
    for r in range(args.rounds):
        for name, tree in trees:
            for path in ("c", "python"):
                us, notes[name, path] = measure(tree, path == "python", args.count)
                results.setdefault((name, path), []).append(us)
                print(f"round {r + 1} {name:>8} {path:>6}: {us:.0f} µs", file=sys.stderr)
    print("| tree | asked | ran | µs CPU per handshake, median | min | rounds |")
    print("|---|---|---|---:|---:|---:|")
    for (name, path), values in results.items():
        print(
            f"| {name} | {path} | {notes[name, path]} | {statistics.median(values):.0f} | {min(values):.0f} "
            f"| {len(values)} |"
        )


if __name__ == "__main__":
    main()
