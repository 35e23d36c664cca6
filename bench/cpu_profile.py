#!/usr/bin/env python3
"""Where a tunnel's CPU goes, per full-sized TCP segment: py-spy on both daemons of a benchmark subject.

Run as root from the repository (py-spy is in the dev extra)::

    .venv/bin/python bench/cpu_profile.py t1 t2 off
    VPNCLOUD_ORIGINAL=/path/to/vpncloud .venv/bin/python bench/cpu_profile.py original mixed

Per subject: the namespaces and daemons of ``bench/dataplane.py``, one iperf3 TCP stream from A to B,
and while it runs ``py-spy record --nonblocking`` on both daemons for ``--duration`` seconds, with
their CPU seconds read from ``/proc`` over the same window. The CPU time per segment (1,448 bytes of
TCP payload) is split over the samples that were not waiting in ``select``, by the function the
sample was in: a syscall line counts as that syscall, kernel work included (a UDP send on a veth
runs the receiving side's softirq in the sender's time slice; a TUN write runs the kernel's TCP
receive), a sample inside coalescing or segmentation counts as that step, the AEAD calls of the
core as AEAD, the rest as Python. Subjects that are not Python (the original) get their total only.
Non-blocking sampling leaves the daemons undisturbed but attributes by the Python frame: C kernel
time shows at the line that calls it.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from subprocess import DEVNULL

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dataplane as dp

from vpncloud.lab.netns import Topology

SPY = Path(sys.executable).parent / "py-spy"
WAIT = "select (selectors"
#: by the innermost frame (the line running): syscalls and the AEAD calls
LEAF = [
    ("AEAD (the kernel call and its Python)", ("encrypt_rows", "decrypt_train", "Aead.seal", "Aead.open")),
    ("TUN write (kernel TCP receive included)", ("write_raw", "_gso_write")),
    ("TUN read", ("read_raw",)),
    ("UDP send (veth and the peer's softirq included)", ("_send_train", "UdpSocket.send ")),
    ("UDP receive", ("recv_trains", "recv_batch")),
]
#: by any frame on the stack: the offload steps
STACK = [
    ("coalescing", ("coalesce",)),
    ("segmentation", ("segment_tcp_rows", "_tcp_layout", "_tcp_template")),
]
OTHER = "Python (core, event loop, counters, other)"


def categorize(raw: Path) -> collections.Counter[str]:
    cats: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if WAIT in frames[-1]:
            continue
        cat = next((name for name, keys in LEAF if any(k in frames[-1] for k in keys)), None)
        if cat is None:
            cat = next((name for name, keys in STACK if any(k in fr for fr in frames for k in keys)), OTHER)
        cats[cat] += int(count)
    return cats


def spy_command(raw: Path, pid: int, duration: int) -> list[str]:
    rate = ["-r", "250", "-d", str(duration)]
    return [str(SPY), "record", "--nonblocking", *rate, "-f", "raw", "-o", str(raw), "-p", str(pid)]


def profile(name: str, duration: int, out: Path) -> list[str]:
    subject = dp.SUBJECTS[name]
    lines = [f"### {subject.label}", ""]
    with tempfile.TemporaryDirectory() as tmp, Topology(prefix=f"vprof{name[:3]}") as topo:
        a, b = dp.build(topo)
        procs = subject.start(topo, a, b, Path(tmp))
        if not dp.wait_until(lambda: a.ping(dp.B_TUN, count=1, timeout=0.5), 40):
            return [*lines, "tunnel did not come up", ""]
        server = dp.topo_popen(topo, b, ["iperf3", "-s"], subprocess.DEVNULL, None)
        time.sleep(0.5)  # iperf3 -s has no readiness signal
        result: dict[str, tuple[float | None, int | None]] = {}
        client = threading.Thread(target=lambda: result.update(r=dp.iperf(a, dp.B_TUN, 1, duration + 4)))
        client.start()
        time.sleep(2)  # past slow start
        pids = [p.pid for p in procs[:2]]
        before = [dp.cpu_seconds(p) for p in pids]
        t0 = time.monotonic()
        python = [Path(f"/proc/{p}/cmdline").read_bytes().startswith(sys.executable.encode()) for p in pids]
        spies = [
            subprocess.Popen(spy_command(out / f"{name}-{side}.txt", pid, duration), stdout=DEVNULL)
            for side, pid, py in zip("ab", pids, python, strict=True)
            if py
        ]
        if not spies:
            time.sleep(duration)
        for spy in spies:
            spy.wait()
        elapsed = time.monotonic() - t0
        cpu = [dp.cpu_seconds(p) - c for p, c in zip(pids, before, strict=True)]
        client.join()
        server.terminate()
    mbit = result.get("r", (None, None))[0]
    if not mbit:
        return [*lines, "iperf3 failed", ""]
    us = [c / elapsed / (mbit * 1e6 / dp.SEGMENT_BITS) * 1e6 for c in cpu]
    lines.append(
        f"{mbit:.0f} Mbit/s; CPU A {cpu[0] / elapsed * 100:.0f} %, B {cpu[1] / elapsed * 100:.0f} %; "
        f"**{us[0] + us[1]:.2f} µs per segment** (A {us[0]:.2f}, B {us[1]:.2f})"
    )
    lines.append("")
    sides = {
        side: categorize(out / f"{name}-{side}.txt") for side in "ab" if (out / f"{name}-{side}.txt").exists()
    }
    if sides:
        lines += ["| step | A (sender) µs | B (receiver) µs | A+B µs |", "|---|---|---|---|"]
        names = [n for n, _ in LEAF] + [n for n, _ in STACK] + [OTHER]
        for cat in names:
            vals = []
            for i, side in enumerate("ab"):
                c = sides.get(side)
                vals.append(us[i] * c[cat] / max(1, sum(c.values())) if c is not None else None)
            cells = " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
            total = sum(v for v in vals if v is not None)
            lines.append(f"| {cat} | {cells} | {total:.2f} |")
        lines.append("")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("subjects", nargs="+", choices=sorted(dp.SUBJECTS))
    ap.add_argument("--duration", type=int, default=12, help="seconds of sampling per subject")
    ap.add_argument("--keep", type=Path, help="keep py-spy's raw stacks (<subject>-a.txt, -b.txt) here")
    args = ap.parse_args()
    if not SPY.exists():
        print(f"{SPY} missing: pip install py-spy (the dev extra has it)")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name in args.subjects:
            print("\n".join(profile(name, args.duration, out)).rstrip() + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
