#!/usr/bin/env python3
"""Cost of one packet through the core right after the process wakes up, next to baselines.

Why this exists: ping through the tunnel at 50/s (bench/dataplane.py) is about three times slower with
our daemon than with the original, while at 1000/s and under load the gap is much smaller. Between two
pings the daemon sleeps 20 ms; on a virtual machine the vCPU halts and the caches and TLBs are taken
over by others, so the next packet runs on cold memory. A Python pass touches far more memory than a
Rust one, and pays for it on every wake-up. This script measures that directly, without a network:

* ``core TX``: one 84-byte ICMP packet read from the device to one encrypted datagram
  (``Node.receive_packet`` + ``take_output``), ``core RX``: that datagram back to the device
  (``Node.receive_datagram`` + ``packets_to_device``), between two connected in-memory nodes;
* baselines measured in the same run: ``AES-GCM call`` (one ``AESGCM.encrypt`` of the same 86 bytes:
  the least any Python pass must do) and ``tight loop`` (2,000 integer additions: interpreter work
  with a tiny memory footprint).

Each is timed after a sleep of 0 (back to back), 1 ms and 20 ms; the table shows medians over
``--rounds`` and the slowdown against back to back. Run from the repository::

    .venv/bin/python bench/wakeup.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vpncloud.sim.harness import Harness, ipv4_packet

GAPS = (0.0, 0.001, 0.02)


def subjects() -> dict[str, Callable[[], object]]:
    h = Harness(seed=1)
    a, b = h.add_node(), h.add_node()
    h.connect(a, b)
    if not h.run_until(lambda: h.connected(a, b) and h.connected(b, a), 10):
        raise SystemExit("the in-memory nodes did not connect")
    h.run_for(1)
    node_a, node_b, now = a.node, b.node, h.now
    packet = ipv4_packet(a.vpn_ip, b.vpn_ip, b"x" * 56, proto=1)
    src = next(iter(node_b.peers))
    frames: list[bytes] = []

    def tx() -> object:
        node_a.receive_packet(packet, now)
        out = node_a.take_output()
        frames.append(out[0][0])  # type: ignore[arg-type]
        return out

    def rx() -> object:
        if not frames:
            tx()
        node_b.receive_datagram(frames.pop(), src, now)
        return node_b.packets_to_device()

    aead = AESGCM(os.urandom(32))
    nonce = bytes(12)
    plain = b"\x00" + packet

    def seal() -> object:
        return aead.encrypt(nonce, plain, None)

    def loop() -> object:
        s = 0
        for i in range(2000):
            s += i
        return s

    return {"core TX": tx, "core RX": rx, "AES-GCM call": seal, "tight loop": loop}


def measure(fn: Callable[[], object], rounds: int) -> list[float]:
    """Median µs of ``fn`` after each gap; the gaps take turns, so a slow minute of the machine
    hits them all alike."""
    times: list[list[float]] = [[] for _ in GAPS]
    for _ in range(rounds):
        for i, gap in enumerate(GAPS):
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e6 for t in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=300)
    args = p.parse_args(argv)
    subs = subjects()
    for fn in subs.values():  # warm-up: imports, first-call caches
        for _ in range(50):
            fn()
    head = " | ".join(f"after {g * 1000:g} ms µs" for g in GAPS)
    print(f"| pass | {head} | slowdown after 1 ms / 20 ms |")
    print("|---|" + "---|" * (len(GAPS) + 1))
    for name, fn in subs.items():
        values = measure(fn, args.rounds)
        ratios = " / ".join(f"{v / values[0]:.1f}x" for v in values[1:])
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {ratios} |")
    python = sys.version.split()[0]
    print(f"\nMedians over {args.rounds} rounds per cell; Python {python}, {os.cpu_count()} CPUs.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
